#include "curve.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

namespace zfarm::broker {

namespace {

// Refusals written to stderr before the handler only counts them: a client
// with the wrong keys retries every reconnect interval, forever.
constexpr std::uint64_t kLoggedRefusals = 20;
// How often the handler thread looks at its stop flag.
constexpr int kStopPollMs = 100;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

bool make_pair(KeyPair* out) {
  char pub[kCurveKeyZ85Chars + 1] = {};
  char sec[kCurveKeyZ85Chars + 1] = {};
  if (zmq_curve_keypair(pub, sec) != 0) return false;
  out->public_key.assign(pub, kCurveKeyZ85Chars);
  out->secret_key.assign(sec, kCurveKeyZ85Chars);
  return true;
}

ZapDecision refuse(std::string text) { return {"400", std::move(text), ""}; }

}  // namespace

std::string generate_curve_keys(CurveKeys* out) {
  if (!make_pair(&out->server) || !make_pair(&out->client) || !make_pair(&out->engine)) {
    return std::string("cannot generate CURVE keys: ") + zmq_strerror(zmq_errno()) +
           " (is libzmq built with CURVE support?)";
  }
  return {};
}

bool z85_key_to_binary(std::string_view text, std::string* out) {
  if (text.size() != kCurveKeyZ85Chars) return false;
  const std::string z(text);  // zmq_z85_decode wants a terminated string
  std::uint8_t bin[kCurveKeyBytes];
  if (zmq_z85_decode(bin, z.c_str()) == nullptr) return false;
  out->assign(reinterpret_cast<const char*>(bin), kCurveKeyBytes);
  return true;
}

bool is_z85_key(std::string_view text) {
  std::string ignored;
  return z85_key_to_binary(text, &ignored);
}

bool public_key_of(std::string_view secret_key, std::string* public_key) {
  if (!is_z85_key(secret_key)) return false;
  const std::string sec(secret_key);
  char pub[kCurveKeyZ85Chars + 1] = {};
  if (zmq_curve_public(pub, sec.c_str()) != 0) return false;
  public_key->assign(pub, kCurveKeyZ85Chars);
  return true;
}

bool add_cluster_keys(const CurveKeys& keys, KeyRing* ring) {
  std::string client, engine;
  if (!z85_key_to_binary(keys.client.public_key, &client) || !z85_key_to_binary(keys.engine.public_key, &engine)) {
    return false;
  }
  ring->client.insert(client);
  ring->engine.insert(engine);
  return true;
}

std::string parse_authorized_keys(std::string_view text, KeyRing* ring) {
  KeyRing add;
  int line_no = 0;
  while (!text.empty()) {
    const auto nl = text.find('\n');
    std::string_view line = trim(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    ++line_no;
    if (line.empty() || line.front() == '#') continue;
    const auto space = line.find_first_of(" \t");
    const std::string_view side = line.substr(0, space);
    const std::string_view key = space == std::string_view::npos ? std::string_view() : trim(line.substr(space));
    const std::string where = "line " + std::to_string(line_no) + ": ";
    if (side != "client" && side != "engine") {
      return where + "expected \"client <key>\" or \"engine <key>\", found \"" + std::string(side) + "\"";
    }
    std::string bin;
    if (!z85_key_to_binary(key, &bin)) {
      return where + "\"" + std::string(key) + "\" is not a CURVE public key (40 characters of Z85)";
    }
    (side == "client" ? add.client : add.engine).insert(bin);
  }
  ring->client.insert(add.client.begin(), add.client.end());
  ring->engine.insert(add.engine.begin(), add.engine.end());
  return {};
}

std::string read_authorized_keys(const std::string& path, KeyRing* ring) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "cannot read " + path + ": " + std::strerror(errno);
  std::ostringstream text;
  text << in.rdbuf();
  const std::string err = parse_authorized_keys(text.str(), ring);
  return err.empty() ? err : path + ", " + err;
}

bool parse_zap_request(const std::vector<std::string>& frames, ZapRequest* out, std::string* why) {
  if (frames.size() < 6) {
    *why = "a ZAP request has at least 6 frames, got " + std::to_string(frames.size());
    return false;
  }
  out->version = frames[0];
  out->request_id = frames[1];
  out->domain = frames[2];
  out->address = frames[3];
  out->identity = frames[4];
  out->mechanism = frames[5];
  out->credentials.assign(frames.begin() + 6, frames.end());
  return true;
}

ZapDecision zap_decide(const ZapRequest& request, const KeyRing& ring) {
  if (request.version != "1.0") return {"500", "unsupported ZAP version", ""};
  if (request.mechanism != "CURVE") return refuse("only CURVE is accepted");
  if (request.credentials.size() != 1 || request.credentials[0].size() != kCurveKeyBytes) {
    return refuse("malformed CURVE credentials");
  }
  const std::string& key = request.credentials[0];
  if (request.domain == kClientDomain) {
    if (ring.client.count(key) != 0) return {"200", "OK", "client"};
    return refuse("client key not authorised");
  }
  if (request.domain == kEngineDomain) {
    if (ring.engine.count(key) != 0) return {"200", "OK", "engine"};
    return refuse("engine key not authorised");
  }
  return refuse("unknown ZAP domain");
}

// ---- the handler thread ----------------------------------------------------

ZapHandler::ZapHandler(zmq::context_t& ctx, KeyRing ring)
    : socket_(ctx, zmq::socket_type::rep), ring_(std::move(ring)) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.bind(kZapEndpoint);
  thread_ = std::thread([this] { run(); });
}

ZapHandler::~ZapHandler() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void ZapHandler::run() {
  zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
  while (!stop_.load()) {
    try {
      zmq::poll(&item, 1, std::chrono::milliseconds(kStopPollMs));
      if ((item.revents & ZMQ_POLLIN) == 0) continue;
      std::vector<std::string> frames;
      while (true) {
        zmq::message_t part;
        if (!socket_.recv(part, zmq::recv_flags::none)) break;
        frames.push_back(part.to_string());
        if (!part.more()) break;
      }
      ZapRequest request;
      std::string why;
      ZapDecision decision;
      if (!parse_zap_request(frames, &request, &why)) {
        decision = {"500", why, ""};
        request.version = "1.0";
        if (frames.size() > 1) request.request_id = frames[1];
      } else {
        decision = zap_decide(request, ring_);
      }
      if (!decision.admitted()) {
        const std::uint64_t n = refused_.fetch_add(1, std::memory_order_relaxed) + 1;
        if (n <= kLoggedRefusals) {
          std::fprintf(stderr, "zfarm-broker: refused a %s connection from %s: %s%s\n",
                       request.domain == kEngineDomain ? "engine" : "client", request.address.c_str(),
                       decision.status_text.c_str(),
                       n == kLoggedRefusals ? " (further refusals are only counted: auth_refused)" : "");
        }
      }
      // A REP socket must answer every request it read, even a bad one.
      socket_.send(zmq::buffer(std::string_view("1.0")), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(request.request_id), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(decision.status_code), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(decision.status_text), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(decision.user_id), zmq::send_flags::sndmore);
      socket_.send(zmq::message_t(), zmq::send_flags::none);
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      if (e.num() == ETERM) break;
      std::fprintf(stderr, "zfarm-broker: ZAP handler: %s\n", e.what());
    }
  }
}

}  // namespace zfarm::broker
