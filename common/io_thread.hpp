// Whole multipart messages on a zmq socket, used by the broker, the engine
// (engine/engine_io.hpp) and the client (client/shared_socket.hpp).  The file
// keeps its name from the IoThread class it held, a socket thread fed through
// queues, which the engine and the client both replaced with cheaper ways of
// sharing their socket (docs/architecture.rst).
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include <zmq.hpp>

namespace zfarm {

using Frames = std::vector<zmq::message_t>;

// Sends a multipart message; false if the socket would block or failed.
bool send_frames(zmq::socket_t& socket, Frames& frames, bool dontwait = false);
// Sends a multipart message without ever blocking.  False if the socket
// would not take its first frame (EAGAIN): nothing went, send it again
// later.  Once the first frame went, libzmq takes the rest.  A zmq error
// (the context is closing) counts the message in *dropped and returns true.
bool try_send_frames(zmq::socket_t& socket, Frames& frames, std::atomic<std::uint64_t>* dropped);
// Receives a whole multipart message without blocking; false if none waits.
bool recv_frames(zmq::socket_t& socket, Frames& out);

}  // namespace zfarm
