#include "io_thread.hpp"

namespace zfarm {

bool send_frames(zmq::socket_t& socket, Frames& frames, bool dontwait) {
  try {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      auto flags = zmq::send_flags::none;
      if (i + 1 < frames.size()) flags = flags | zmq::send_flags::sndmore;
      if (dontwait) flags = flags | zmq::send_flags::dontwait;
      if (!socket.send(frames[i], flags)) return false;
    }
  } catch (const zmq::error_t&) {
    return false;
  }
  return true;
}

bool try_send_frames(zmq::socket_t& socket, Frames& frames, std::atomic<std::uint64_t>* dropped) {
  if (frames.empty()) return true;
  try {
    if (!socket.send(frames[0], frames.size() > 1 ? zmq::send_flags::sndmore | zmq::send_flags::dontwait
                                                  : zmq::send_flags::dontwait)) {
      return false;
    }
    for (std::size_t i = 1; i < frames.size(); ++i) {
      socket.send(frames[i], i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  } catch (const zmq::error_t&) {
    ++*dropped;
  }
  return true;
}

bool recv_frames(zmq::socket_t& socket, Frames& out) {
  out.clear();
  try {
    while (true) {
      zmq::message_t msg;
      auto got = socket.recv(msg, out.empty() ? zmq::recv_flags::dontwait : zmq::recv_flags::none);
      if (!got) return false;
      const bool more = msg.more();
      out.push_back(std::move(msg));
      if (!more) return true;
    }
  } catch (const zmq::error_t&) {
    return false;
  }
}

}  // namespace zfarm
