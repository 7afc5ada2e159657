#include "executor.hpp"

#include <pybind11/embed.h>

#include <cstring>
#include <utility>

#include "log.hpp"

namespace py = pybind11;

namespace zfarm::engine {

namespace {

// One received payload frame, owned by Python.  The message is a member of
// a heap object that never moves, so its data pointer stays valid (zmq keeps
// very small messages inside the message_t itself).  The buffer is writable:
// the bytes belong to this message alone, and users expect a pushed numpy
// array to be an ordinary array they can update in place.
class Frame {
 public:
  explicit Frame(zmq::message_t msg) : msg_(std::move(msg)) {}
  Frame(const Frame&) = delete;
  Frame& operator=(const Frame&) = delete;

  py::buffer_info buffer() {
    static unsigned char empty = 0;  // a valid pointer for empty frames
    void* data = msg_.size() > 0 ? msg_.data() : &empty;
    return py::buffer_info(data, 1, "B", 1, {static_cast<py::ssize_t>(msg_.size())}, {1},
                           /*readonly=*/false);
  }
  std::size_t size() const { return msg_.size(); }
  py::bytes to_bytes() const { return py::bytes(static_cast<const char*>(msg_.data()), msg_.size()); }

 private:
  zmq::message_t msg_;
};

// Copies one bytes-like object into a zmq message.  A copy for now: handing
// the buffer over without one means releasing it (taking the GIL) from the
// I/O thread once zmq is done with it, which is left for later.  A bytes
// object (the usual pickle) is read directly, without the buffer protocol.
zmq::message_t to_message(py::handle obj) {
  if (PyBytes_CheckExact(obj.ptr())) {
    return zmq::message_t(PyBytes_AS_STRING(obj.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(obj.ptr())));
  }
  Py_buffer view;
  if (PyObject_GetBuffer(obj.ptr(), &view, PyBUF_FULL_RO) != 0) throw py::error_already_set();
  zmq::message_t msg(static_cast<std::size_t>(view.len));
  const int rc = view.len > 0 ? PyBuffer_ToContiguous(msg.data(), &view, view.len, 'C') : 0;
  PyBuffer_Release(&view);
  if (rc != 0) throw py::error_already_set();
  return msg;
}

// A first payload frame up to this size reaches run_task as bytes (a copy);
// a larger one, and every later frame (out-of-band buffers, which users
// expect to be writable and never copied), as a Frame.
constexpr std::size_t kCopyFirstFrameMax = 64 * 1024;

Outcome failure(std::uint64_t task_id, const std::string& what) {
  log_error("task %llu: %s", static_cast<unsigned long long>(task_id), what.c_str());
  Outcome out;
  out.status = 1;  // ResultStatus::kRemoteError
  out.error = what;
  out.frames.emplace_back(what.data(), what.size());
  return out;
}

OutputPipe* g_output_pipe = nullptr;

// What a task printed, as UTF-8, for the OutputPipe.  Text holding lone
// surrogates (surrogateescape) cannot be UTF-8: those become U+FFFD in the
// streamed copy only (the Result keeps the str as it is).
void write_output(int stream, py::handle text, bool capped) {
  OutputPipe* pipe = g_output_pipe;
  if (pipe == nullptr) return;
  Py_ssize_t n = 0;
  const char* utf8 = PyUnicode_Check(text.ptr()) ? PyUnicode_AsUTF8AndSize(text.ptr(), &n) : nullptr;
  if (utf8 != nullptr) {
    pipe->write(stream, std::string_view(utf8, static_cast<std::size_t>(n)), capped, OutputPipe::Clock::now());
    return;
  }
  PyErr_Clear();
  py::object bytes = py::reinterpret_steal<py::object>(PyUnicode_AsEncodedString(text.ptr(), "utf-8", "replace"));
  if (!bytes) {
    PyErr_Clear();
    pipe->write(stream, {}, capped, OutputPipe::Clock::now());
    return;
  }
  pipe->write(stream, std::string_view(PyBytes_AS_STRING(bytes.ptr()), PyBytes_GET_SIZE(bytes.ptr())), capped,
              OutputPipe::Clock::now());
}

}  // namespace

void set_output_pipe(OutputPipe* pipe) { g_output_pipe = pipe; }

PYBIND11_EMBEDDED_MODULE(_zfarm_engine, m) {
  m.doc() = "Helpers of the zfarm-engine process (only importable inside it).";
  py::class_<Frame>(m, "Frame", py::buffer_protocol(),
                    "A received message frame; read-only buffer, no copy.")
      .def_buffer(&Frame::buffer)
      .def("__len__", &Frame::size)
      .def("__bytes__", &Frame::to_bytes);
  m.def("write_output", &write_output, py::arg("stream"), py::arg("text"), py::arg("capped") = false,
        "Streams text the running task printed (0 stdout, 1 stderr) to its client; best effort.");
}

Executor::Executor() {
  // Make the Frame type exist before the first task.
  py::module_::import("_zfarm_engine");
  try {
    worker_ = py::module_::import("zfarm._worker");
    run_task_ = worker_.attr("run_task");
  } catch (const py::error_already_set& e) {
    import_error_ = std::string("cannot import zfarm._worker: ") + e.what();
  }
}

Executor::~Executor() = default;

PyObject* Executor::first_frame(const zmq::message_t& msg) {
  const auto* data = static_cast<const char*>(msg.data());
  const auto size = static_cast<Py_ssize_t>(msg.size());
  PyObject* last = last_first_.ptr();
  if (last != nullptr && PyBytes_GET_SIZE(last) == size && std::memcmp(PyBytes_AS_STRING(last), data, msg.size()) == 0) {
    Py_INCREF(last);
    return last;
  }
  PyObject* item = PyBytes_FromStringAndSize(data, size);
  if (item == nullptr) throw py::error_already_set();
  if (msg.size() <= kKeepFirstFrameMax) last_first_ = py::reinterpret_borrow<py::object>(item);
  return item;
}

Outcome Executor::run(std::uint64_t task_id, Frames payload) {
  if (!run_task_) return failure(task_id, import_error_);
  try {
    // Plain CPython calls on this path: pybind11's casts and checks cost
    // more than the no-op task they wrap (callgrind: ~4,300 instructions of
    // crossing per task before, see docs/architecture.rst).
    py::list frames(payload.size());
    for (std::size_t i = 0; i < payload.size(); ++i) {
      zmq::message_t& msg = payload[i];
      PyObject* item = nullptr;
      if (i == 0 && msg.size() <= kCopyFirstFrameMax) {
        // The pickle stream: unpickling copies what it holds anyway, and a
        // bytes object is cheaper to make than a Frame.
        item = first_frame(msg);
      } else {
        item = py::cast(new Frame(std::move(msg)), py::return_value_policy::take_ownership).release().ptr();
      }
      PyList_SET_ITEM(frames.ptr(), static_cast<Py_ssize_t>(i), item);  // steals item
    }
    py::object id = py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(task_id));
    if (!id) throw py::error_already_set();
    py::object returned = py::reinterpret_steal<py::object>(
        PyObject_CallFunctionObjArgs(run_task_.ptr(), id.ptr(), frames.ptr(), nullptr));
    if (!returned) throw py::error_already_set();
    if (!PyTuple_Check(returned.ptr()) || PyTuple_GET_SIZE(returned.ptr()) != 2) {
      return failure(task_id, "zfarm._worker.run_task did not return (status, frames)");
    }
    Outcome out;
    out.status = static_cast<std::uint32_t>(PyLong_AsUnsignedLong(PyTuple_GET_ITEM(returned.ptr(), 0)));
    if (PyErr_Occurred() != nullptr) throw py::error_already_set();
    PyObject* result_frames = PyTuple_GET_ITEM(returned.ptr(), 1);
    if (PyList_Check(result_frames) || PyTuple_Check(result_frames)) {
      // A list, or a tuple made once (the result of a no-op, say).
      const Py_ssize_t n = PySequence_Fast_GET_SIZE(result_frames);
      PyObject** items = PySequence_Fast_ITEMS(result_frames);
      out.frames.reserve(static_cast<std::size_t>(n));
      for (Py_ssize_t i = 0; i < n; ++i) out.frames.push_back(to_message(items[i]));
    } else {
      for (py::handle item : py::reinterpret_borrow<py::object>(result_frames)) out.frames.push_back(to_message(item));
    }
    if (out.status != 0 && py::hasattr(worker_, "last_error")) {
      // run_task keeps the error it pickled: was it a KeyboardInterrupt?
      py::object last = worker_.attr("last_error");
      if (py::isinstance<py::dict>(last)) {
        py::dict info = last.cast<py::dict>();
        if (info.contains("ename") && py::str(info["ename"]).cast<std::string>() == "KeyboardInterrupt") {
          out.keyboard_interrupt = true;
          if (info.contains("traceback")) out.traceback = py::str(info["traceback"]).cast<std::string>();
        }
      }
    }
    return out;
  } catch (py::error_already_set& e) {
    // A KeyboardInterrupt can also land in run_task's own code, outside the
    // user's (say, while it pickles the result).
    if (e.matches(PyExc_KeyboardInterrupt)) {
      Outcome out = failure(task_id, "interrupted in zfarm._worker.run_task");
      out.keyboard_interrupt = true;
      out.traceback = e.what();
      return out;
    }
    return failure(task_id, std::string("zfarm._worker.run_task failed: ") + e.what());
  } catch (const std::exception& e) {
    return failure(task_id, std::string("zfarm._worker.run_task failed: ") + e.what());
  }
}

}  // namespace zfarm::engine
