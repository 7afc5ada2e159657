#include "security.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "endpoint.hpp"

namespace zfarm::broker {

std::string plan_security(const SecurityOptions& options, std::string* client_endpoint,
                          std::string* engine_endpoint, SecurityPlan* plan) {
  plan->curve = options.curve;

  ConnectionInfo previous;
  bool have_previous = false;
  if (options.reuse) {
    if (options.connection_file.empty()) return "--reuse needs --connection-file (the file to reuse)";
    if (::access(options.connection_file.c_str(), F_OK) != 0) {
      plan->messages.push_back("no " + options.connection_file + " to reuse yet: starting with new endpoints" +
                               std::string(options.curve ? " and keys" : ""));
    } else {
      std::string err = read_connection_file(options.connection_file, &previous);
      if (!err.empty()) return "cannot reuse " + err;
      have_previous = true;
      if (!options.client_endpoint_given) *client_endpoint = previous.client;
      if (!options.engine_endpoint_given) *engine_endpoint = previous.engine;
      // Keys once handed out stay in force: engines and clients hold them.
      if (previous.curve) plan->curve = true;
    }
  }

  std::vector<std::string> exposed;  // non-loopback endpoints, with the reason
  for (const std::string* ep : {client_endpoint, engine_endpoint}) {
    std::string why;
    if (!is_local_endpoint(*ep, &why)) exposed.push_back(*ep + ": " + why);
  }
  if (!exposed.empty() && !plan->curve) {
    if (options.allow_insecure) {
      for (const auto& e : exposed) {
        plan->messages.push_back("WARNING: --allow-insecure: binding " + e +
                                 ". There is NO authentication and NO encryption: anyone who can reach "
                                 "this address can run any code on the engines and read every task.");
      }
    } else {
      plan->curve = true;
      plan->messages.push_back("binding an address other than loopback: CURVE is on (" + exposed.front() + ")");
    }
  }
  if (!plan->curve) {
    if (!options.authorized_keys.empty()) return "--authorized-keys needs CURVE: add --curve";
    return {};
  }

  if (options.connection_file.empty()) {
    return "CURVE needs --connection-file: the keys clients and engines need are written only there" +
           std::string(exposed.empty() ? "" : " (an address other than loopback turns CURVE on; "
                                              "--allow-insecure binds it without any authentication)");
  }
  if (have_previous && previous.curve) {
    plan->keys = previous.keys;
    plan->messages.push_back("reusing the CURVE keys of " + options.connection_file);
  } else {
    std::string err = generate_curve_keys(&plan->keys);
    if (!err.empty()) return err;
  }
  if (!add_cluster_keys(plan->keys, &plan->ring)) return "the CURVE keys are not valid Z85 keys";
  if (!options.authorized_keys.empty()) {
    std::string err = read_authorized_keys(options.authorized_keys, &plan->ring);
    if (!err.empty()) return "--authorized-keys: " + err;
  }
  return {};
}

void make_curve_server(zmq::socket_t& socket, const SecurityPlan& plan, const char* domain) {
  socket.set(zmq::sockopt::zap_domain, domain);
  socket.set(zmq::sockopt::curve_server, 1);
  socket.set(zmq::sockopt::curve_secretkey, plan.keys.server.secret_key);
}

// ---- failed handshakes ----------------------------------------------------

namespace {

// Log lines about failed handshakes, per socket: enough to see who and why,
// few enough that an intruder retrying forever cannot fill the log.
constexpr std::size_t kLoggedFailures = 20;
constexpr std::chrono::minutes kLogWindow{10};
// Events queued for the reader at most (with the monitor's own 1000): far
// more than arrive between two ticks; beyond it libzmq drops them uncounted.
constexpr int kMonitorQueue = 100000;

}  // namespace

bool parse_monitor_event(const void* data, std::size_t size, MonitorEvent* out) {
  if (size != sizeof(std::uint16_t) + sizeof(std::uint32_t)) return false;
  const auto* p = static_cast<const unsigned char*>(data);
  std::memcpy(&out->event, p, sizeof(std::uint16_t));
  std::memcpy(&out->value, p + sizeof(std::uint16_t), sizeof(std::uint32_t));
  return true;
}

std::string describe_handshake_failure(const MonitorEvent& e) {
  switch (e.event) {
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
      return "refused by the key check (ZAP status " + std::to_string(e.value) + ")";
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
      switch (e.value) {
        case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
          return "security mechanism mismatch (a peer without the CURVE keys, or with keys for a plain-text broker)";
        case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
          return "CURVE decryption failed (a peer with the wrong server key)";
        default: {
          char hex[16];
          std::snprintf(hex, sizeof hex, "0x%08x", e.value);
          return std::string("protocol error ") + hex + " during the handshake";
        }
      }
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
      return std::string("the connection failed during the handshake (") + std::strerror(static_cast<int>(e.value)) +
             ")";
    default:
      return "monitor event " + std::to_string(e.event);
  }
}

bool LogLimiter::allow(Clock::time_point now, std::uint64_t* left_out) {
  if (!started_ || now - window_start_ >= window_) {
    started_ = true;
    window_start_ = now;
    written_ = 0;
  }
  if (written_ >= burst_) {
    ++left_out_;
    return false;
  }
  ++written_;
  *left_out = left_out_;
  left_out_ = 0;
  return true;
}

HandshakeMonitor::HandshakeMonitor(zmq::context_t& ctx, zmq::socket_t& socket, const char* side)
    : side_(side), reader_(ctx, zmq::socket_type::pair), log_(kLoggedFailures, kLogWindow) {
  const std::string endpoint = "inproc://zfarm-handshakes-" + side_;
  if (zmq_socket_monitor(socket.handle(), endpoint.c_str(), kHandshakeFailureEvents) != 0) throw zmq::error_t();
  reader_.set(zmq::sockopt::linger, 0);
  reader_.set(zmq::sockopt::rcvhwm, kMonitorQueue);
  reader_.connect(endpoint);
  fd_ = reader_.get(zmq::sockopt::fd);
}

bool HandshakeMonitor::drain(LogLimiter::Clock::time_point now) {
  bool any = false;
  zmq::message_t first, address;
  for (;;) {
    try {
      if (!reader_.recv(first, zmq::recv_flags::dontwait)) return any;
      // An event is two frames; the second names the endpoint.
      address.rebuild();
      if (first.more() && !reader_.recv(address, zmq::recv_flags::dontwait)) return any;
    } catch (const zmq::error_t&) {
      return any;  // EINTR: the next drain reads on
    }
    MonitorEvent e;
    if (!parse_monitor_event(first.data(), first.size(), &e) || (e.event & kHandshakeFailureEvents) == 0) continue;
    ++failed_;
    any = true;
    std::uint64_t left_out = 0;
    if (log_.allow(now, &left_out)) {
      std::string more;
      if (left_out > 0) more = " (" + std::to_string(left_out) + " more were only counted)";
      std::fprintf(stderr, "zfarm-broker: a %s handshake on %s failed: %s; %llu so far%s\n", side_.c_str(),
                   address.to_string().c_str(), describe_handshake_failure(e).c_str(),
                   static_cast<unsigned long long>(failed_), more.c_str());
    }
  }
}

}  // namespace zfarm::broker
