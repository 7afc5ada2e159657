#include "session.hpp"

namespace zfarm::engine {

using proto::Header;
using proto::MsgType;

Session::Session(SessionOptions options) : options_(std::move(options)) {
  if (options_.credit < 1) options_.credit = 1;
  if (options_.liveness < 1) options_.liveness = 1;
  if (options_.heartbeat.count() < 1) options_.heartbeat = std::chrono::milliseconds(1);
}

void Session::send_register(Clock::time_point now, std::vector<Header>* out) {
  Header h;
  h.type = MsgType::kRegister;
  h.aux = options_.credit;
  h.text = options_.host_pid;
  h.opts.revision = options_.revision;
  out->push_back(std::move(h));
  state_ = State::kRegistering;
  next_register_ = now + options_.register_retry;
}

Session::Verdict Session::on_message(const Header& h, Clock::time_point now, std::vector<Header>* out) {
  if (state_ == State::kStopped) return Verdict::kDone;
  last_heard_ = now;
  switch (h.type) {
    case MsgType::kRegisterReply:
      // Another id from the same broker means it declared us dead and dealt
      // with our tasks; another incarnation means a new broker.
      if (registrations_ > 0 && (h.aux != engine_id_.load() || h.text != incarnation_)) ++epoch_;
      incarnation_ = h.text;
      broker_revision_ = h.opts.revision;
      engine_id_ = h.aux;
      if (h.status > 0) options_.heartbeat = std::chrono::milliseconds(h.status);
      if (state_ != State::kRegistered) {
        ++registrations_;
        next_heartbeat_ = now + options_.heartbeat;
      }
      state_ = State::kRegistered;
      return Verdict::kDone;
    case MsgType::kHeartbeat:
      return Verdict::kDone;
    case MsgType::kTask:
      return Verdict::kRunTask;
    case MsgType::kInterrupt:
      return Verdict::kInterrupt;
    case MsgType::kShutdown:
      state_ = State::kStopped;
      return Verdict::kShutdown;
    case MsgType::kError:
      // The broker no longer knows us (it declared us dead, or restarted).
      if (h.text.rfind("unknown engine", 0) == 0) {
        // Whatever we hold was sent under a registration it has forgotten.
        ++epoch_;
        send_register(now, out);
      }
      return Verdict::kDone;
    default:
      return Verdict::kUnexpected;
  }
}

void Session::on_tick(Clock::time_point now, std::vector<Header>* out) {
  if (state_ == State::kStopped) return;
  if (last_heard_ == Clock::time_point{}) last_heard_ = now;  // the silence starts with us
  if (options_.broker_timeout.count() > 0 && now - last_heard_ >= options_.broker_timeout) {
    state_ = State::kStopped;
    gave_up_ = true;
    return;
  }
  switch (state_) {
    case State::kStopped:
      return;
    case State::kRegistering:
      if (now >= next_register_) send_register(now, out);
      return;
    case State::kRegistered:
      if (now - last_heard_ > options_.liveness * options_.heartbeat) {
        send_register(now, out);
        return;
      }
      if (now >= next_heartbeat_) {
        Header h;
        h.type = MsgType::kHeartbeat;
        h.aux = engine_id_.load();
        out->push_back(std::move(h));
        next_heartbeat_ = now + options_.heartbeat;
      }
      return;
  }
}

Header Session::leave_message() const {
  Header h;
  h.type = MsgType::kShutdown;
  h.aux = engine_id_.load();
  return h;
}

}  // namespace zfarm::engine
