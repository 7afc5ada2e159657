// Executor: runs tasks in the embedded interpreter by calling
//
//     zfarm._worker.run_task(task_id: int, frames: list) -> (status, frames)
//
// Out-of-band payload frames reach Python without a copy: each zmq message
// is wrapped in a _zfarm_engine.Frame, which owns the message and exposes it
// through the buffer protocol, so whatever Python builds on it (a numpy
// array unpickled from an out-of-band buffer) keeps it alive.  The first
// frame, the pickle itself, comes as bytes when it is small (unpickling
// copies it anyway; a bytes object is cheaper to make than a Frame).
//
// Every method requires the calling thread to hold the GIL.
#pragma once

#include <cstdint>
#include <string>

#include <pybind11/pybind11.h>

#include "io_thread.hpp"
#include "output_pipe.hpp"

namespace zfarm::engine {

// The pipe that _zfarm_engine.write_output(stream, text, capped) feeds
// (zfarm._worker calls it for what a task prints); nullptr: the text is only
// kept for the Result.  Set by main before the first task, cleared before
// the pipe goes away.  Main thread only (the GIL guards it).
void set_output_pipe(OutputPipe* pipe);

struct Outcome {
  std::uint32_t status = 0;  // proto::ResultStatus: 0 ok, 1 remote error
  Frames frames;             // result payload
  std::string error;         // set when run_task itself failed (or is missing)
  // The task ended by KeyboardInterrupt (an Interrupt from the broker, or
  // Ctrl-C); `traceback` is its Python traceback.
  bool keyboard_interrupt = false;
  std::string traceback;
};

class Executor {
 public:
  // Imports zfarm._worker.  If that fails the engine still serves: every
  // task then ends as a remote error carrying the import error, so the
  // client sees why instead of waiting for an engine that never comes.
  Executor();
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  Outcome run(std::uint64_t task_id, Frames payload);

  // Empty when zfarm._worker was imported.
  const std::string& import_error() const { return import_error_; }

 private:
  // The first payload frame as bytes.  The same bytes object as last time
  // when the frame repeats the last one kept (a function called again
  // without arguments, an execute of the same code): no allocation, no
  // copy, and its hash, which run_task's cache of such calls looks up, is
  // already known.  Bytes are immutable, so sharing one changes nothing.
  PyObject* first_frame(const zmq::message_t& msg);
  // Frames up to this size are kept for that comparison (a miss of equal
  // size costs one memcmp of at most this much).
  static constexpr std::size_t kKeepFirstFrameMax = 8 * 1024;

  pybind11::object run_task_;
  pybind11::object last_first_;  // the last first frame kept, or null
  pybind11::object worker_;  // the zfarm._worker module (its last_error)
  std::string import_error_;
};

}  // namespace zfarm::engine
