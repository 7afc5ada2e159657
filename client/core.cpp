// zfarm._core: the client's transport, in C++.
//
// A Core owns one DEALER socket (a SharedSocket): the calling thread sends
// itself (messages encoded here with the shared codec), and the receiver
// thread collects incoming messages in batches, with the GIL released while
// it waits.  Incoming payload frames reach Python
// as Frame objects that own their zmq message and expose the buffer protocol,
// so unpickled numpy arrays point into them without a copy.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <msgpack.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "protocol.hpp"
#include "shared_socket.hpp"

namespace py = pybind11;
using namespace zfarm;

namespace {

// Owns one received frame; Python sees it as a writable buffer (the bytes
// belong to this message alone), so gathered numpy arrays can be updated.
struct Frame {
  zmq::message_t msg;
};

// A latch a Python thread waits on without the GIL, set once when a call
// ends.  The receiver thread ends most calls while it holds the GIL; waking
// the waiting thread right then makes it find the GIL taken and sleep again
// until the receiver lets go (two wake-ups, the receiver preempted in
// between).  So the receiver hands the latches of what it ended to
// Core::fire_later, and Core::recv fires them once it has released the GIL.
class Latch {
 public:
  void fire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      fired_ = true;
    }
    cv_.notify_all();
  }

  // True once fired; false after timeout seconds (None: no limit).  Waits
  // in slices so that Ctrl-C (a Python signal handler) still interrupts it.
  bool wait(std::optional<double> timeout) {
    using Clock = std::chrono::steady_clock;
    const auto deadline = timeout ? Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                       std::chrono::duration<double>(std::max(*timeout, 0.0)))
                                  : Clock::time_point::max();
    for (;;) {
      {
        py::gil_scoped_release nogil;
        std::unique_lock<std::mutex> lock(mu_);
        const auto until = std::min(deadline, Clock::now() + kSignalCheck);
        if (cv_.wait_until(lock, until, [this] { return fired_; })) return true;
      }
      if (Clock::now() >= deadline) return false;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
  }

  bool fired() {
    std::lock_guard<std::mutex> lock(mu_);
    return fired_;
  }

 private:
  static constexpr std::chrono::milliseconds kSignalCheck{50};
  std::mutex mu_;
  std::condition_variable cv_;
  bool fired_ = false;
};

struct Outgoing {
  proto::Header header;
  std::vector<py::buffer_info> buffers;
};

std::string random_identity(const char* prefix) {
  std::random_device rd;
  std::uniform_int_distribution<std::uint64_t> dist;
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s-%016llx", prefix, static_cast<unsigned long long>(dist(rd)));
  return buf;
}

// A Python dict of options (keys as in proto::Options) into the header's
// seventh item.  Unknown keys are a programming error on this side: refused.
proto::Options to_options(const py::object& opts) {
  proto::Options o;
  if (opts.is_none()) return o;
  for (auto item : opts.cast<py::dict>()) {
    const std::string key = item.first.cast<std::string>();
    py::handle v = item.second;
    if (key == "retries") o.retries = v.cast<std::int64_t>();
    else if (key == "timeout_ms") o.timeout_ms = v.cast<std::int64_t>();
    else if (key == "priority") o.priority = v.cast<std::int64_t>();
    else if (key == "after") o.after = v.cast<std::vector<std::uint64_t>>();
    else if (key == "follow") o.follow = v.cast<std::vector<std::uint64_t>>();
    else if (key == "engines") o.engines = v.cast<std::vector<std::int64_t>>();
    else if (key == "ids") o.ids = v.cast<std::vector<std::uint64_t>>();
    else if (key == "session") o.session = v.cast<std::string>();
    else if (key == "revision") o.revision = v.cast<std::int64_t>();
    else throw py::value_error("unknown option " + key);
  }
  return o;
}

py::object from_options(const proto::Options& o) {
  if (o.empty()) return py::none();
  py::dict d;
  if (o.retries != 0) d["retries"] = o.retries;
  if (o.timeout_ms != 0) d["timeout_ms"] = o.timeout_ms;
  if (o.priority != 0) d["priority"] = o.priority;
  if (!o.after.empty()) d["after"] = o.after;
  if (!o.follow.empty()) d["follow"] = o.follow;
  if (!o.engines.empty()) d["engines"] = o.engines;
  if (!o.ids.empty()) d["ids"] = o.ids;
  if (!o.session.empty()) d["session"] = o.session;
  if (o.revision != 0) d["revision"] = o.revision;
  return d;
}

// Reads one (type, id, targets, aux, text, frames[, opts]) message while
// holding the GIL.
Outgoing to_outgoing(int type, std::uint64_t id, std::vector<std::int64_t> targets, std::int64_t aux,
                     std::string text, const py::list& frames, const py::object& opts = py::none()) {
  if (type <= 0 || type > proto::kMaxMsgType) throw py::value_error("unknown message type");
  Outgoing o;
  o.header.opts = to_options(opts);
  o.header.type = static_cast<proto::MsgType>(type);
  o.header.id = id;
  o.header.targets = std::move(targets);
  o.header.aux = aux;
  o.header.text = std::move(text);
  o.buffers.reserve(frames.size());
  for (const auto& f : frames) {
    o.buffers.push_back(py::reinterpret_borrow<py::buffer>(f).request());
  }
  return o;
}

// Payloads smaller than this are copied with the GIL held: releasing it
// lets the receiver thread take it, and getting it back costs far more than
// copying a few hundred kilobytes (a thread switch, or Python's 5 ms switch
// interval when both threads want it).
constexpr std::size_t kReleaseGilBytes = 256 * 1024;

std::size_t payload_bytes(const Outgoing& o) {
  std::size_t n = 0;
  for (const auto& b : o.buffers) n += static_cast<std::size_t>(b.size * b.itemsize);
  return n;
}

// Builds the wire frames; copies the payload (for large payloads called
// without the GIL; the buffer_info objects keep the Python buffers alive).
Frames build_frames(const Outgoing& o) {
  Frames frames;
  frames.reserve(2 + o.buffers.size());
  proto::encode_header(o.header, frames);
  for (const auto& b : o.buffers) {
    frames.emplace_back(b.ptr, static_cast<std::size_t>(b.size * b.itemsize));
  }
  return frames;
}

// Packs each run of consecutive small Submits in `wire` (the messages of
// `batch`, encoded) into Batches of at most kBatchMaxRecords records and
// about kBatchBodyBytes (revision 4; the caller checked the broker's), in
// place and in order: the broker reads one message where it would have
// read one per task.  A run of one stays as it is.  Returns how many
// Batches it made.  Needs no GIL.
std::uint64_t batch_submits(const std::vector<Outgoing>& batch, std::vector<Frames>& wire) {
  std::vector<Frames> out;
  out.reserve(wire.size());
  std::vector<const Frames*> records;
  std::size_t first = 0, count = 0, bytes = 0;  // the run: wire[first, first + count)
  std::uint64_t made = 0;
  auto close_run = [&] {
    if (count == 1) {
      out.push_back(std::move(wire[first]));
    } else if (count > 1) {
      records.clear();
      for (std::size_t i = first; i < first + count; ++i) records.push_back(&wire[i]);
      out.push_back(proto::pack_batch(records));
      ++made;
    }
    count = 0;
    bytes = 0;
  };
  for (std::size_t i = 0; i < wire.size(); ++i) {
    if (batch[i].header.type == proto::MsgType::kSubmit && proto::batchable(proto::MsgType::kSubmit, wire[i])) {
      const std::size_t b = proto::batch_bytes(wire[i]);
      if (count > 0 && (count >= proto::kBatchMaxRecords || bytes + b > proto::kBatchBodyBytes)) close_run();
      if (count == 0) first = i;
      ++count;
      bytes += b;
      continue;
    }
    close_run();
    out.push_back(std::move(wire[i]));
  }
  close_run();
  wire = std::move(out);
  return made;
}

// Header text as str; bytes that are not UTF-8 become U+FFFD.
py::str decode_text(const std::string& text) {
  PyObject* s = PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "replace");
  if (s == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

py::object to_python(const msgpack::object& o) {
  switch (o.type) {
    case msgpack::type::NIL: return py::none();
    case msgpack::type::BOOLEAN: return py::bool_(o.via.boolean);
    case msgpack::type::POSITIVE_INTEGER: return py::int_(o.via.u64);
    case msgpack::type::NEGATIVE_INTEGER: return py::int_(o.via.i64);
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return py::float_(o.via.f64);
    case msgpack::type::STR: return py::str(o.via.str.ptr, o.via.str.size);
    case msgpack::type::BIN: return py::bytes(o.via.bin.ptr, o.via.bin.size);
    case msgpack::type::ARRAY: {
      py::list l;
      for (std::uint32_t i = 0; i < o.via.array.size; ++i) l.append(to_python(o.via.array.ptr[i]));
      return l;
    }
    case msgpack::type::MAP: {
      py::dict d;
      for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
        d[to_python(o.via.map.ptr[i].key)] = to_python(o.via.map.ptr[i].val);
      }
      return d;
    }
    default: return py::none();
  }
}

// A Z85 key from the curve dict, checked here so a bad connection file gives
// a clear error instead of libzmq's EINVAL.
std::string curve_key(const py::dict& curve, const char* name) {
  if (!curve.contains(name)) throw py::value_error(std::string("curve: missing ") + name);
  std::string key = py::str(curve[name]).cast<std::string>();
  std::uint8_t bin[32];
  if (key.size() != 40 || zmq_z85_decode(bin, key.c_str()) == nullptr) {
    throw py::value_error(std::string("curve: ") + name + " is not a Z85 CURVE key (40 characters)");
  }
  return key;
}

// A fresh CURVE key pair (public, secret), Z85 text.
py::tuple curve_keypair() {
  char pub[41] = {};
  char sec[41] = {};
  if (zmq_curve_keypair(pub, sec) != 0) throw std::runtime_error("libzmq has no CURVE support");
  return py::make_tuple(std::string(pub, 40), std::string(sec, 40));
}

// A first payload frame up to this size reaches Python as bytes: copying
// it costs less than a Frame object (a pybind11 instance), and bytes can key
// a cache of decoded results.  That frame is the pickle stream, read once;
// buffers that must stay writable and uncopied (numpy data) travel in the
// later frames, which stay Frames.
constexpr std::size_t kBytesFrameMax = 4096;

py::object new_ref(PyObject* o) {
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(o);
}

// Seconds since the Unix epoch, as a float: one clock read per received
// batch, the `received` of each Result in it.
py::object wall_clock_now() {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  return new_ref(PyFloat_FromDouble(static_cast<double>(ns) * 1e-9));
}

// (type, id, status, aux, text, payload, started, run time, received) of
// one Result, made with the C API: pybind11's casters cost more than the
// rest of the receive for small results.  The timing: seconds since the
// epoch by the engine's clock, seconds, and seconds since the epoch by ours
// (`received`, one object for the whole batch).  Started and run time are
// None without timing (the task did not run, an older engine or broker, or
// a malformed field, which is only counted).  Three items rather than a
// tuple of them: a tuple per result, tracked by the garbage collector, cost
// more than the rest of the timing together.
py::tuple result_tuple(proto::Message& msg, const py::object& received, std::uint64_t* bad_timing) {
  py::list payload;
  for (std::size_t i = 0; i < msg.payload.size(); ++i) {
    zmq::message_t& f = msg.payload[i];
    if (i == 0 && f.size() <= kBytesFrameMax) {
      py::object b = new_ref(PyBytes_FromStringAndSize(static_cast<const char*>(f.data()),
                                                       static_cast<Py_ssize_t>(f.size())));
      if (PyList_Append(payload.ptr(), b.ptr()) != 0) throw py::error_already_set();
    } else {
      payload.append(py::cast(Frame{std::move(f)}));
    }
  }
  py::object text = msg.header.text.empty() ? new_ref(PyUnicode_New(0, 0)) : py::object(decode_text(msg.header.text));
  proto::Timing timing;
  if (proto::read_timing(msg.header, &timing) == proto::TimingField::kMalformed) ++*bad_timing;
  py::object started = py::none();
  py::object ran = py::none();
  if (timing.present()) {
    started = new_ref(PyFloat_FromDouble(static_cast<double>(timing.started_us) * 1e-6));
    ran = new_ref(PyFloat_FromDouble(static_cast<double>(timing.run_ns) * 1e-9));
  }
  py::object items[9] = {new_ref(PyLong_FromLong(static_cast<long>(msg.header.type))),
                         new_ref(PyLong_FromUnsignedLongLong(msg.header.id)),
                         new_ref(PyLong_FromLongLong(static_cast<long long>(msg.header.status))),
                         new_ref(PyLong_FromLongLong(static_cast<long long>(msg.header.aux))),
                         std::move(text), std::move(payload), std::move(started), std::move(ran), received};
  py::tuple t(9);
  for (int i = 0; i < 9; ++i) PyTuple_SET_ITEM(t.ptr(), i, items[i].release().ptr());
  return t;
}

class Core {
 public:
  // `curve`: None for plain text, or a dict with server_public,
  // client_public and client_secret (Z85, as in the connection file's
  // "curve" section; other keys are ignored).
  explicit Core(const std::string& endpoint, const py::object& curve = py::none()) : ctx_(1) {
    zmq::socket_t sock(ctx_, zmq::socket_type::dealer);
    sock.set(zmq::sockopt::routing_id, random_identity("client"));
    sock.set(zmq::sockopt::sndhwm, 0);
    sock.set(zmq::sockopt::rcvhwm, 0);
    sock.set(zmq::sockopt::linger, 0);
    if (!curve.is_none()) {
      const py::dict keys = curve.cast<py::dict>();
      sock.set(zmq::sockopt::curve_serverkey, curve_key(keys, "server_public"));
      sock.set(zmq::sockopt::curve_publickey, curve_key(keys, "client_public"));
      sock.set(zmq::sockopt::curve_secretkey, curve_key(keys, "client_secret"));
    }
    sock.connect(endpoint);
    io_ = std::make_shared<SharedSocket>(std::move(sock));
  }

  ~Core() { close(); }

  void send(int type, std::uint64_t id, std::vector<std::int64_t> targets, std::int64_t aux,
            std::string text, const py::list& frames, const py::object& opts) {
    auto io = open_io();
    Outgoing o = to_outgoing(type, id, std::move(targets), aux, std::move(text), frames, opts);
    check_sizes(o);
    Frames wire;
    if (payload_bytes(o) < kReleaseGilBytes) {
      wire = build_frames(o);
    } else {
      py::gil_scoped_release nogil;
      wire = build_frames(o);
    }
    io->send(std::move(wire));
  }

  // A Submit without options whose frames are all bytes: what apply_async
  // sends per task (load-balanced: `targets` None) and what a DirectView
  // call sends to its engines (`targets` a list of engine ids).  Same
  // message as send(kSubmit, id, targets or [-1], 0, "", frames); without
  // the general path's conversions (an option dict, a buffer request per
  // frame, pybind11's casts of the targets), which cost more than the send
  // itself.  Anything else goes through send().
  void submit(std::uint64_t id, const py::list& frames, const py::object& targets) {
    proto::Header h;
    h.type = proto::MsgType::kSubmit;
    h.id = id;
    if (targets.is_none()) {
      h.targets.push_back(proto::kLoadBalanced);
    } else if (!PyList_Check(targets.ptr())) {
      h.targets = targets.cast<std::vector<std::int64_t>>();
    } else {
      PyObject* list = targets.ptr();
      const Py_ssize_t k = PyList_GET_SIZE(list);
      h.targets.reserve(static_cast<std::size_t>(k));
      for (Py_ssize_t i = 0; i < k; ++i) {
        const long long t = PyLong_AsLongLong(PyList_GET_ITEM(list, i));
        if (t == -1 && PyErr_Occurred() != nullptr) throw py::error_already_set();
        h.targets.push_back(static_cast<std::int64_t>(t));
      }
    }
    const Py_ssize_t n = PyList_GET_SIZE(frames.ptr());
    bool plain = true;
    for (Py_ssize_t i = 0; i < n && plain; ++i) plain = PyBytes_CheckExact(PyList_GET_ITEM(frames.ptr(), i));
    if (!plain) {
      send(static_cast<int>(proto::MsgType::kSubmit), id, std::move(h.targets), 0, std::string(), frames,
           py::none());
      return;
    }
    auto io = open_io();
    Frames wire;
    wire.reserve(2 + static_cast<std::size_t>(n));
    proto::encode_header(h, wire);
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* b = PyList_GET_ITEM(frames.ptr(), i);
      const auto size = static_cast<std::int64_t>(PyBytes_GET_SIZE(b));
      check_frame_size(size);
      wire.emplace_back(PyBytes_AS_STRING(b), static_cast<std::size_t>(size));
    }
    io->send(std::move(wire));
  }

  // Many messages for one wake-up of the I/O thread: the batching that makes
  // thousands of small submits cheap.
  void send_many(const py::list& messages) {
    auto io = open_io();
    std::vector<Outgoing> batch;
    batch.reserve(messages.size());
    for (const auto& m : messages) {
      auto t = m.cast<py::tuple>();
      if (t.size() != 6 && t.size() != 7) {
        throw py::value_error("each message is (type, id, targets, aux, text, frames[, opts])");
      }
      batch.push_back(to_outgoing(t[0].cast<int>(), t[1].cast<std::uint64_t>(),
                                  t[2].cast<std::vector<std::int64_t>>(), t[3].cast<std::int64_t>(),
                                  t[4].cast<std::string>(), t[5].cast<py::list>(),
                                  t.size() == 7 ? py::object(t[6]) : py::object(py::none())));
      check_sizes(batch.back());
    }
    std::size_t total = 0;
    for (const auto& o : batch) total += payload_bytes(o);
    std::vector<Frames> wire;
    wire.reserve(batch.size());
    const bool batches = broker_revision_ >= 4;
    std::uint64_t packed = 0;
    if (total < kReleaseGilBytes) {
      for (const auto& o : batch) wire.push_back(build_frames(o));
      if (batches) packed = batch_submits(batch, wire);
    } else {
      py::gil_scoped_release nogil;
      for (const auto& o : batch) wire.push_back(build_frames(o));
      if (batches) packed = batch_submits(batch, wire);
    }
    batches_sent_ += packed;
    io->send_many(wire);
  }

  // Sends frames exactly as given, without a signature or header: for tests
  // that feed the broker garbage.
  void send_raw(const py::list& frames) {
    auto io = open_io();
    Frames wire;
    for (const auto& f : frames) {
      py::buffer_info b = py::reinterpret_borrow<py::buffer>(f).request();
      wire.emplace_back(b.ptr, static_cast<std::size_t>(b.size * b.itemsize));
    }
    io->send(std::move(wire));
  }

  // Returns a list of (type, id, status, aux, text, [Frame, ...], targets,
  // opts-dict-or-None), a Result as (type, id, status, aux, text, [Frame,
  // ...], started, run time, received) (see result_tuple; it has no
  // options, and a Result per task is the bulk of the traffic); messages
  // that do not decode are counted in bad_messages and skipped.
  py::list recv(int timeout_ms, std::size_t max_batch) {
    py::list out;
    // A copy of the pointer, taken under the GIL: close() on another thread
    // may drop Core's reference meanwhile, and the socket must outlive this
    // wait (close() wakes it).
    std::shared_ptr<SharedSocket> io = io_;
    if (!io) {
      fire_kept();
      return out;
    }
    std::vector<Frames> got = fire_kept_then([&](std::vector<Frames>& into) {
      io->recv(into, timeout_ms, max_batch);
    });
    decode_all(got, out);
    return out;
  }

  // A thread waiting for a result reads the socket itself (see
  // SharedSocket::claim): true if it now does, false if another thread
  // has it (or the receiver did not hand it over within kClaimWaitMs).
  // Until release(), call recv_claimed() and handle what it returns as the
  // receiver thread would.
  bool claim() {
    if (!io_ || claimed_) return false;
    std::shared_ptr<SharedSocket> io = io_;
    bool ok;
    {
      py::gil_scoped_release nogil;
      ok = io->claim(kClaimWaitMs);
    }
    if (ok) claimed_ = std::move(io);
    return ok;
  }

  // recv() for the claimant; raises what a signal handler raises (Ctrl-C)
  // when it returns with nothing.
  py::list recv_claimed(int timeout_ms, std::size_t max_batch) {
    py::list out;
    std::shared_ptr<SharedSocket> io = claimed_;
    if (!io) return out;
    std::vector<Frames> got = fire_kept_then([&](std::vector<Frames>& into) {
      io->recv_claimed(into, timeout_ms, max_batch);
    });
    if (got.empty()) {
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      return out;
    }
    decode_all(got, out);
    return out;
  }

  // The claimant hands the socket back to the receiver thread, and fires
  // the latches it kept (fire_later).
  void release() {
    std::shared_ptr<SharedSocket> io = std::move(claimed_);
    claimed_.reset();
    std::vector<std::shared_ptr<Latch>> ended = std::exchange(later_, {});
    py::gil_scoped_release nogil;
    if (io) io->release();
    for (auto& l : ended) l->fire();
  }

  // Without the GIL: fires the latches kept by fire_later(), then reads
  // with `read` (recv or recv_claimed) into the vector it returns.
  template <typename Read>
  std::vector<Frames> fire_kept_then(Read read) {
    std::vector<std::shared_ptr<Latch>> ended = std::exchange(later_, {});
    std::vector<Frames> got;
    py::gil_scoped_release nogil;
    for (auto& l : ended) l->fire();
    ended.clear();
    read(got);
    return got;
  }

  // Fired by the next recv(), after it releases the GIL (see Latch); called
  // by the receiver thread, which always goes back to recv().
  void fire_later(std::shared_ptr<Latch> latch) { later_.push_back(std::move(latch)); }

  // Fires what fire_later() kept, now (a receiver thread that leaves).
  void fire_kept() {
    for (auto& l : later_) l->fire();
    later_.clear();
  }

  // io_ is only read or written with the GIL held; the close itself runs
  // without it so the receiver thread can finish its wait.
  void close() {
    fire_kept();
    std::shared_ptr<SharedSocket> io = std::move(io_);
    io_.reset();
    if (!io) return;
    py::gil_scoped_release nogil;
    io->close();
  }

  bool closed() const { return !io_; }
  bool claimed() const { return static_cast<bool>(claimed_); }
  std::int64_t broker_revision() const { return broker_revision_; }
  std::uint64_t batches_received() const { return batches_received_; }
  std::uint64_t batches_sent() const { return batches_sent_; }
  std::int64_t max_message_bytes() const { return max_message_bytes_; }
  void set_max_message_bytes(std::int64_t n) { max_message_bytes_ = n; }
  std::uint64_t bad_messages() const { return bad_messages_; }
  std::uint64_t bad_timing() const { return bad_timing_; }

 private:
  // The broker disconnects a peer sending a frame over its limit
  // (ZMQ_MAXMSGSIZE), which the sender would only notice as silence: refuse
  // such a frame here, with the numbers.
  void check_sizes(const Outgoing& o) const {
    if (max_message_bytes_ < 0) return;
    for (const auto& b : o.buffers) check_frame_size(static_cast<std::int64_t>(b.size * b.itemsize));
  }

  void check_frame_size(std::int64_t n) const {
    if (max_message_bytes_ >= 0 && n > max_message_bytes_) {
      throw py::value_error("a frame of " + std::to_string(n) + " bytes exceeds the broker's limit of " +
                            std::to_string(max_message_bytes_) + " bytes (zfarm-broker --max-message-bytes)");
    }
  }

  // The messages of one read, decoded into out (see recv).
  void decode_all(std::vector<Frames>& got, py::list& out) {
    py::object received = got.empty() ? py::none() : wall_clock_now();
    // One decoded message for the whole batch: its header's vectors keep
    // their storage (a Result's timing would otherwise allocate per result).
    proto::Message msg;
    for (auto& frames : got) {
      proto::Status st = proto::decode(frames, 0, &msg);
      if (!st.ok()) {
        ++bad_messages_;
        continue;
      }
      if (msg.header.type != proto::MsgType::kBatch) {
        append_message(out, msg, received);
        continue;
      }
      // A Batch (revision 4): each record as if it had come alone, in
      // order; a bad one is dropped whole (decode_batch is all or nothing).
      st = proto::decode_batch(msg, records_);
      if (!st.ok()) {
        ++bad_messages_;
        continue;
      }
      ++batches_received_;
      for (auto& record : records_) append_message(out, record, received);
    }
  }

  // One decoded message into recv()'s list (see recv).
  void append_message(py::list& out, proto::Message& msg, const py::object& received) {
    if (msg.header.type == proto::MsgType::kResult) {
      out.append(result_tuple(msg, received, &bad_timing_));
      return;
    }
    // Every Welcome names the broker's revision (a restarted broker may be
    // an older one): whether Submits may go in Batches.
    if (msg.header.type == proto::MsgType::kWelcome) broker_revision_ = msg.header.opts.revision;
    py::list payload;
    for (auto& f : msg.payload) payload.append(py::cast(Frame{std::move(f)}));
    out.append(py::make_tuple(static_cast<int>(msg.header.type), msg.header.id, msg.header.status,
                              msg.header.aux, decode_text(msg.header.text), payload,
                              py::cast(msg.header.targets), from_options(msg.header.opts)));
  }

  std::shared_ptr<SharedSocket> open_io() const {
    if (!io_) throw std::runtime_error("the connection is closed");
    return io_;
  }

  zmq::context_t ctx_;
  std::shared_ptr<SharedSocket> io_;
  std::vector<std::shared_ptr<Latch>> later_;  // only touched with the GIL held
  std::shared_ptr<SharedSocket> claimed_;      // while this thread claims the socket (GIL held)
  // How long claim() waits for the receiver thread to finish handling what
  // it read; after that the caller waits for its result as before.
  static constexpr int kClaimWaitMs = 50;
  std::uint64_t bad_messages_ = 0;
  std::uint64_t bad_timing_ = 0;  // Results with a malformed timing (delivered without it)
  std::vector<proto::Message> records_;  // a received Batch's records, reused (GIL held)
  std::int64_t broker_revision_ = 0;     // from the last Welcome (GIL held)
  std::uint64_t batches_received_ = 0;
  std::uint64_t batches_sent_ = 0;
  std::int64_t max_message_bytes_ = -1;  // -1: no check
};

py::object decode_msgpack(const py::buffer& data) {
  py::buffer_info b = data.request();
  const msgpack::unpack_limit limit(1 << 20, 1 << 16, 1 << 20, 1 << 24, 0, 16);
  try {
    std::size_t off = 0;
    auto handle = msgpack::unpack(static_cast<const char*>(b.ptr), static_cast<std::size_t>(b.size * b.itemsize),
                                  off, nullptr, nullptr, limit);
    return to_python(handle.get());
  } catch (const std::exception& e) {
    throw py::value_error(std::string("bad msgpack: ") + e.what());
  }
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "zfarm's C++ client transport";
  m.attr("PROTOCOL_VERSION") = static_cast<int>(proto::kVersion);
  m.attr("PROTOCOL_REVISION") = static_cast<int>(proto::kRevision);

  py::class_<Frame>(m, "Frame", py::buffer_protocol())
      .def_buffer([](Frame& f) {
        return py::buffer_info(f.msg.data(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(f.msg.size())}, {1}, /*readonly=*/false);
      })
      .def("__len__", [](const Frame& f) { return f.msg.size(); })
      .def("bytes", [](const Frame& f) { return py::bytes(static_cast<const char*>(f.msg.data()), f.msg.size()); });

  py::class_<Latch, std::shared_ptr<Latch>>(m, "Latch")
      .def(py::init<>())
      .def("fire", &Latch::fire, py::call_guard<py::gil_scoped_release>())
      .def("wait", &Latch::wait, py::arg("timeout") = py::none())
      .def_property_readonly("fired", &Latch::fired);

  py::class_<Core>(m, "Core")
      .def(py::init<const std::string&, const py::object&>(), py::arg("endpoint"), py::arg("curve") = py::none())
      .def("send", &Core::send, py::arg("type"), py::arg("id"), py::arg("targets"), py::arg("aux"),
           py::arg("text"), py::arg("frames"), py::arg("opts") = py::none())
      .def("submit", &Core::submit, py::arg("id"), py::arg("frames"), py::arg("targets") = py::none())
      .def("send_many", &Core::send_many, py::arg("messages"))
      .def("send_raw", &Core::send_raw, py::arg("frames"))
      .def("recv", &Core::recv, py::arg("timeout_ms"), py::arg("max_batch") = 4096)
      .def("claim", &Core::claim)
      .def("recv_claimed", &Core::recv_claimed, py::arg("timeout_ms"), py::arg("max_batch") = 4096)
      .def("release", &Core::release)
      .def("fire_later", &Core::fire_later, py::arg("latch"))
      .def("fire_kept", &Core::fire_kept)
      .def("close", &Core::close)
      .def_property_readonly("closed", &Core::closed)
      .def_property_readonly("claimed", &Core::claimed, "a thread waiting in get() reads the socket now")
      .def_property_readonly("bad_messages", &Core::bad_messages)
      .def_property_readonly("bad_timing", &Core::bad_timing)
      .def_property_readonly("broker_revision", &Core::broker_revision,
                             "the protocol revision of the broker's last Welcome (0 before one)")
      .def_property_readonly("batches_received", &Core::batches_received)
      .def_property_readonly("batches_sent", &Core::batches_sent)
      .def_property("max_message_bytes", &Core::max_message_bytes, &Core::set_max_message_bytes,
                    "frames larger than this are refused by send (ValueError); -1: no check");

  m.def("decode_msgpack", &decode_msgpack, py::arg("data"));
  m.def("curve_keypair", &curve_keypair, "A new CURVE key pair (public, secret) as Z85 text.");
}
