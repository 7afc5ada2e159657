// CURVE keys, authorized-keys files, the ZAP decision and the connection
// file's "curve" section, all without sockets; and the handshake monitor,
// with real sockets on loopback TCP.
#include <doctest/doctest.h>
#include <poll.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "curve.hpp"
#include "endpoint.hpp"
#include "security.hpp"

using namespace zfarm::broker;

namespace {

CurveKeys fresh_keys() {
  CurveKeys k;
  REQUIRE(generate_curve_keys(&k).empty());
  return k;
}

std::string binary(const std::string& z85) {
  std::string out;
  REQUIRE(z85_key_to_binary(z85, &out));
  return out;
}

ZapRequest curve_request(const char* domain, const std::string& public_z85) {
  ZapRequest r;
  r.version = "1.0";
  r.request_id = "7";
  r.domain = domain;
  r.address = "127.0.0.1";
  r.mechanism = "CURVE";
  r.credentials = {binary(public_z85)};
  return r;
}

}  // namespace

TEST_CASE("generated keys are distinct Z85 pairs that belong together") {
  const CurveKeys k = fresh_keys();
  for (const KeyPair* p : {&k.server, &k.client, &k.engine}) {
    CHECK(p->public_key.size() == kCurveKeyZ85Chars);
    CHECK(is_z85_key(p->public_key));
    CHECK(is_z85_key(p->secret_key));
    std::string derived;
    CHECK(public_key_of(p->secret_key, &derived));
    CHECK(derived == p->public_key);
  }
  CHECK(k.server.public_key != k.client.public_key);
  CHECK(k.client.public_key != k.engine.public_key);
}

TEST_CASE("z85 keys: wrong length or alphabet is not a key") {
  CHECK_FALSE(is_z85_key(""));
  CHECK_FALSE(is_z85_key(std::string(39, 'a')));
  CHECK_FALSE(is_z85_key(std::string(41, 'a')));
  CHECK_FALSE(is_z85_key(std::string(39, 'a') + "\""));  // '"' is not in Z85
  CHECK_FALSE(is_z85_key(std::string(39, 'a') + " "));
  CHECK(is_z85_key(std::string(40, 'a')));
}

TEST_CASE("authorized keys: client and engine lines, comments and blanks") {
  const CurveKeys a = fresh_keys(), b = fresh_keys();
  const std::string text = "# extra peers\n\nclient " + a.client.public_key + "\n  engine\t" +
                           b.engine.public_key + "  \r\nclient " + b.client.public_key;  // no final newline
  KeyRing ring;
  CHECK(parse_authorized_keys(text, &ring) == "");
  CHECK(ring.client.size() == 2);
  CHECK(ring.engine.size() == 1);
  CHECK(ring.client.count(binary(a.client.public_key)) == 1);
  CHECK(ring.engine.count(binary(b.engine.public_key)) == 1);
}

TEST_CASE("authorized keys: a bad line names its number and changes nothing") {
  const CurveKeys a = fresh_keys();
  KeyRing ring;
  std::string err = parse_authorized_keys("client " + a.client.public_key + "\nserver " + a.server.public_key, &ring);
  CHECK(err.find("line 2") == 0);
  CHECK(ring.client.empty());

  err = parse_authorized_keys("\n\nengine not-a-key\n", &ring);
  CHECK(err.find("line 3") == 0);
  CHECK(err.find("not a CURVE public key") != std::string::npos);

  err = parse_authorized_keys("client\n", &ring);
  CHECK(err.find("line 1") == 0);
  CHECK(ring.client.empty());
  CHECK(ring.engine.empty());
}

TEST_CASE("authorized keys: a missing file is an error") {
  KeyRing ring;
  CHECK(read_authorized_keys("/nonexistent-zfarm-dir/keys", &ring).find("cannot read") == 0);
}

TEST_CASE("zap: listed keys are admitted on their own side only") {
  const CurveKeys k = fresh_keys();
  KeyRing ring;
  REQUIRE(add_cluster_keys(k, &ring));

  ZapDecision d = zap_decide(curve_request(kClientDomain, k.client.public_key), ring);
  CHECK(d.admitted());
  CHECK(d.user_id == "client");
  d = zap_decide(curve_request(kEngineDomain, k.engine.public_key), ring);
  CHECK(d.admitted());
  CHECK(d.user_id == "engine");

  // The engine key does not open the client socket, nor the other way round.
  CHECK(zap_decide(curve_request(kClientDomain, k.engine.public_key), ring).status_code == "400");
  CHECK(zap_decide(curve_request(kEngineDomain, k.client.public_key), ring).status_code == "400");
}

TEST_CASE("zap: unlisted keys, other mechanisms, domains and versions are refused") {
  const CurveKeys k = fresh_keys(), stranger = fresh_keys();
  KeyRing ring;
  REQUIRE(add_cluster_keys(k, &ring));

  CHECK(zap_decide(curve_request(kClientDomain, stranger.client.public_key), ring).status_code == "400");
  // The server's own public key is no client key either.
  CHECK_FALSE(zap_decide(curve_request(kClientDomain, k.server.public_key), ring).admitted());

  ZapRequest r = curve_request(kClientDomain, k.client.public_key);
  r.mechanism = "NULL";
  r.credentials.clear();
  CHECK(zap_decide(r, ring).status_code == "400");
  r.mechanism = "PLAIN";
  r.credentials = {"user", "password"};
  CHECK(zap_decide(r, ring).status_code == "400");

  r = curve_request("", k.client.public_key);
  CHECK(zap_decide(r, ring).status_code == "400");
  r = curve_request("zfarm-other", k.client.public_key);
  CHECK(zap_decide(r, ring).status_code == "400");

  r = curve_request(kClientDomain, k.client.public_key);
  r.version = "2.0";
  CHECK(zap_decide(r, ring).status_code == "500");

  r = curve_request(kClientDomain, k.client.public_key);
  r.credentials = {std::string(31, 'x')};
  CHECK(zap_decide(r, ring).status_code == "400");
  r.credentials = {};
  CHECK(zap_decide(r, ring).status_code == "400");
}

TEST_CASE("zap: authorized keys add to the cluster keys") {
  const CurveKeys k = fresh_keys(), extra = fresh_keys();
  KeyRing ring;
  REQUIRE(add_cluster_keys(k, &ring));
  REQUIRE(parse_authorized_keys("engine " + extra.engine.public_key + "\n", &ring) == "");
  CHECK(zap_decide(curve_request(kEngineDomain, extra.engine.public_key), ring).admitted());
  CHECK(zap_decide(curve_request(kEngineDomain, k.engine.public_key), ring).admitted());
  CHECK_FALSE(zap_decide(curve_request(kClientDomain, extra.engine.public_key), ring).admitted());
}

TEST_CASE("zap: a request of too few frames is not parsed") {
  ZapRequest r;
  std::string why;
  CHECK_FALSE(parse_zap_request({"1.0", "1", "zfarm-client"}, &r, &why));
  CHECK_FALSE(why.empty());
  REQUIRE(parse_zap_request({"1.0", "1", "zfarm-client", "addr", "id", "CURVE", "key"}, &r, &why));
  CHECK(r.mechanism == "CURVE");
  CHECK(r.credentials == std::vector<std::string>{"key"});
}

TEST_CASE("connection file: the curve section round-trips") {
  ConnectionInfo info;
  info.client = "tcp://127.0.0.1:1000";
  info.engine = "ipc:///tmp/zfarm \"quoted\"";
  info.pid = 99;
  info.max_message_bytes = 1 << 20;
  info.curve = true;
  info.keys = fresh_keys();
  ConnectionInfo back;
  REQUIRE(parse_connection_file(connection_file_text(info), &back) == "");
  CHECK(back.client == info.client);
  CHECK(back.engine == info.engine);
  CHECK(back.pid == 99);
  CHECK(back.max_message_bytes == 1 << 20);
  CHECK(back.curve);
  CHECK(back.keys.server.secret_key == info.keys.server.secret_key);
  CHECK(back.keys.client.public_key == info.keys.client.public_key);
  CHECK(back.keys.engine.secret_key == info.keys.engine.secret_key);

  info.curve = false;
  REQUIRE(parse_connection_file(connection_file_text(info), &back) == "");
  CHECK_FALSE(back.curve);
  CHECK(connection_file_text(info).find("curve") == std::string::npos);
}

TEST_CASE("connection file: bad input is an error, not a crash") {
  ConnectionInfo out;
  CHECK_FALSE(parse_connection_file("", &out).empty());
  CHECK_FALSE(parse_connection_file("[1, 2]", &out).empty());
  CHECK_FALSE(parse_connection_file("{\"client\": \"a\"", &out).empty());
  CHECK_FALSE(parse_connection_file("{\"client\": \"a\"}", &out).empty());
  CHECK_FALSE(parse_connection_file("{\"client\": 1, \"engine\": \"b\"}", &out).empty());
  CHECK_FALSE(parse_connection_file("{\"client\": \"a\", \"engine\": \"b\", \"curve\": 5}", &out).empty());

  ConnectionInfo info;
  info.client = "a";
  info.engine = "b";
  info.curve = true;
  info.keys = fresh_keys();
  // A public key that does not belong to its secret key.
  ConnectionInfo swapped = info;
  swapped.keys.client.public_key = info.keys.engine.public_key;
  std::string err = parse_connection_file(connection_file_text(swapped), &out);
  CHECK(err.find("client_public") != std::string::npos);
  // A missing key.
  std::string text = connection_file_text(info);
  const auto at = text.find("\"engine_secret\"");
  REQUIRE(at != std::string::npos);
  text.replace(at, 15, "\"engine_secreT\"");
  CHECK(parse_connection_file(text, &out).find("engine_secret") != std::string::npos);
}

// ---- failed handshakes ----------------------------------------------------------------------

TEST_CASE("monitor events: the 6-byte first frame, and words for each failure") {
  unsigned char frame[6];
  const std::uint16_t event = ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL;
  const std::uint32_t value = ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH;
  std::memcpy(frame, &event, 2);
  std::memcpy(frame + 2, &value, 4);
  MonitorEvent e;
  REQUIRE(parse_monitor_event(frame, sizeof frame, &e));
  CHECK(e.event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL);
  CHECK(e.value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH);
  CHECK_FALSE(parse_monitor_event(frame, 5, &e));
  CHECK_FALSE(parse_monitor_event(frame, 0, &e));
  CHECK(describe_handshake_failure(e).find("without the CURVE keys") != std::string::npos);
  CHECK(describe_handshake_failure({ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC})
            .find("wrong server key") != std::string::npos);
  CHECK(describe_handshake_failure({ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, 0x10000001}).find("0x10000001") !=
        std::string::npos);
  CHECK(describe_handshake_failure({ZMQ_EVENT_HANDSHAKE_FAILED_AUTH, 400}).find("ZAP status 400") !=
        std::string::npos);
  CHECK(describe_handshake_failure({ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL, ECONNRESET}).find(std::strerror(ECONNRESET)) !=
        std::string::npos);
}

TEST_CASE("log limiter: a burst per window, then a count of what was left out") {
  using C = LogLimiter::Clock;
  LogLimiter log(2, std::chrono::minutes(1));
  const C::time_point t0{};
  std::uint64_t left_out = 99;
  CHECK(log.allow(t0, &left_out));
  CHECK(left_out == 0);
  CHECK(log.allow(t0 + std::chrono::seconds(1), &left_out));
  CHECK_FALSE(log.allow(t0 + std::chrono::seconds(2), &left_out));
  CHECK_FALSE(log.allow(t0 + std::chrono::seconds(59), &left_out));
  CHECK(log.allow(t0 + std::chrono::seconds(60), &left_out));  // a new window
  CHECK(left_out == 2);
  CHECK(log.allow(t0 + std::chrono::seconds(61), &left_out));
  CHECK(left_out == 0);
}

namespace {

// Waits (bounded) until the monitor reports a failed handshake.
bool failure_seen(HandshakeMonitor& m) {
  const auto give_up = LogLimiter::Clock::now() + std::chrono::seconds(20);
  while (LogLimiter::Clock::now() < give_up) {
    if (m.drain(LogLimiter::Clock::now())) return true;
    pollfd p{m.fd(), POLLIN, 0};
    ::poll(&p, 1, 100);
  }
  return false;
}

}  // namespace

TEST_CASE("handshake monitor counts a peer without keys and one with the wrong server key, not a good one") {
  zmq::context_t ctx(1);
  CurveKeys keys = fresh_keys();
  zmq::socket_t server(ctx, zmq::socket_type::router);
  server.set(zmq::sockopt::linger, 0);
  server.set(zmq::sockopt::curve_server, 1);
  server.set(zmq::sockopt::curve_secretkey, keys.server.secret_key);
  HandshakeMonitor monitor(ctx, server, "client");
  server.bind("tcp://127.0.0.1:*");
  const std::string endpoint = server.get(zmq::sockopt::last_endpoint);

  auto peer = [&](const std::string* server_public) {
    zmq::socket_t s(ctx, zmq::socket_type::dealer);
    s.set(zmq::sockopt::linger, 0);
    if (server_public != nullptr) {
      s.set(zmq::sockopt::curve_serverkey, *server_public);
      s.set(zmq::sockopt::curve_publickey, keys.client.public_key);
      s.set(zmq::sockopt::curve_secretkey, keys.client.secret_key);
    }
    s.connect(endpoint);
    return s;
  };

  {
    zmq::socket_t plain = peer(nullptr);
    CHECK(failure_seen(monitor));
  }
  const std::uint64_t after_plain = monitor.failed();
  CHECK(after_plain >= 1);
  {
    CurveKeys other = fresh_keys();
    zmq::socket_t wrong = peer(&other.server.public_key);
    CHECK(failure_seen(monitor));
  }
  CHECK(monitor.failed() > after_plain);

  // A peer with the right key gets through; the count does not move.
  monitor.drain(LogLimiter::Clock::now());
  const std::uint64_t before = monitor.failed();
  zmq::socket_t good = peer(&keys.server.public_key);
  good.send(zmq::str_buffer("hi"), zmq::send_flags::none);
  server.set(zmq::sockopt::rcvtimeo, 20000);
  zmq::message_t identity, body;
  REQUIRE(server.recv(identity));
  REQUIRE(server.recv(body));
  CHECK(body.to_string() == "hi");
  monitor.drain(LogLimiter::Clock::now());
  CHECK(monitor.failed() == before);
}
