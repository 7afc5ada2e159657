// Session and connection-file units, beside the code they test.  The
// Session has no socket, so each case feeds it messages and clock ticks.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "connection_file.hpp"
#include "session.hpp"

using namespace zfarm;
using namespace zfarm::engine;
using std::chrono::milliseconds;
using Clock = Session::Clock;

namespace {

SessionOptions options() {
  SessionOptions o;
  o.credit = 3;
  o.heartbeat = milliseconds(100);
  o.liveness = 3;
  o.host_pid = "host:1";
  return o;
}

proto::Header msg(proto::MsgType type, std::int64_t aux = 0, std::uint32_t status = 0, std::string text = {}) {
  proto::Header h;
  h.type = type;
  h.aux = aux;
  h.status = status;
  h.text = std::move(text);
  return h;
}

}  // namespace

TEST_CASE("session registers on the first tick and resends every second") {
  Session s(options());
  std::vector<proto::Header> out;
  const auto t0 = Clock::now();
  s.on_tick(t0, &out);
  REQUIRE(out.size() == 1);
  CHECK(out[0].type == proto::MsgType::kRegister);
  CHECK(out[0].aux == 3);
  CHECK(out[0].text == "host:1");
  out.clear();
  s.on_tick(t0 + milliseconds(999), &out);
  CHECK(out.empty());
  s.on_tick(t0 + milliseconds(1000), &out);
  CHECK(out.size() == 1);
  CHECK(s.engine_id() == -1);
}

TEST_CASE("session takes id and interval from RegisterReply, then heartbeats") {
  Session s(options());
  std::vector<proto::Header> out;
  const auto t0 = Clock::now();
  s.on_tick(t0, &out);
  out.clear();
  CHECK(s.on_message(msg(proto::MsgType::kRegisterReply, 4, 250), t0, &out) == Session::Verdict::kDone);
  CHECK(s.state() == Session::State::kRegistered);
  CHECK(s.engine_id() == 4);
  CHECK(s.heartbeat() == milliseconds(250));
  s.on_tick(t0 + milliseconds(249), &out);
  CHECK(out.empty());
  s.on_tick(t0 + milliseconds(250), &out);
  REQUIRE(out.size() == 1);
  CHECK(out[0].type == proto::MsgType::kHeartbeat);
  CHECK(out[0].aux == 4);
}

TEST_CASE("session registers again when the broker is silent for liveness intervals") {
  Session s(options());
  std::vector<proto::Header> out;
  const auto t0 = Clock::now();
  s.on_message(msg(proto::MsgType::kRegisterReply, 1, 100), t0, &out);
  s.on_message(msg(proto::MsgType::kHeartbeat), t0 + milliseconds(200), &out);
  s.on_tick(t0 + milliseconds(500), &out);  // 300 ms since the last word: not yet
  CHECK(s.state() == Session::State::kRegistered);
  out.clear();
  s.on_tick(t0 + milliseconds(501), &out);
  REQUIRE(out.size() == 1);
  CHECK(out[0].type == proto::MsgType::kRegister);
  CHECK(s.state() == Session::State::kRegistering);
}

TEST_CASE("session registers again on Error unknown engine, not on other errors") {
  Session s(options());
  std::vector<proto::Header> out;
  const auto t0 = Clock::now();
  s.on_message(msg(proto::MsgType::kRegisterReply, 1, 100), t0, &out);
  s.on_message(msg(proto::MsgType::kError, 0, 0, "credit must be at least 1"), t0, &out);
  CHECK(out.empty());
  CHECK(s.state() == Session::State::kRegistered);
  s.on_message(msg(proto::MsgType::kError, 0, 0, "unknown engine: register again"), t0, &out);
  REQUIRE(out.size() == 1);
  CHECK(out[0].type == proto::MsgType::kRegister);
  s.on_message(msg(proto::MsgType::kRegisterReply, 9, 100), t0, &out);
  CHECK(s.engine_id() == 9);
  CHECK(s.registrations() == 2);
}

TEST_CASE("session hands tasks on, stops on Shutdown, refuses client messages") {
  Session s(options());
  std::vector<proto::Header> out;
  const auto t0 = Clock::now();
  CHECK(s.on_message(msg(proto::MsgType::kTask), t0, &out) == Session::Verdict::kRunTask);
  CHECK(s.on_message(msg(proto::MsgType::kSubmit), t0, &out) == Session::Verdict::kUnexpected);
  CHECK(s.on_message(msg(proto::MsgType::kResult), t0, &out) == Session::Verdict::kUnexpected);
  CHECK(s.on_message(msg(proto::MsgType::kShutdown), t0, &out) == Session::Verdict::kShutdown);
  CHECK(s.state() == Session::State::kStopped);
  s.on_tick(t0 + milliseconds(5000), &out);
  CHECK(out.empty());
}

TEST_CASE("connection file: engine field found, escapes decoded, nesting skipped") {
  std::string v, why;
  CHECK(json_string_field(R"({"version": 1, "client": "tcp://a", "engine": "tcp://127.0.0.1:5", "pid": 3})",
                          "engine", &v, &why));
  CHECK(v == "tcp://127.0.0.1:5");
  CHECK(json_string_field(R"({"x": {"engine": "no"}, "l": [1, "]"], "engine": "ipc:///t\/a\"b\u00e9"})", "engine",
                          &v, &why));
  CHECK(v == "ipc:///t/a\"b\xc3\xa9");
}

TEST_CASE("connection file: bad input is an error, not a crash") {
  std::string v, why;
  for (const char* bad : {"", "[]", "{", "{}", R"({"engine": 5})", R"({"engine": "unterminated)",
                          R"({"engine" "x"})", R"({"a": 1 "engine": "x"})", R"({"engine": "\uZZZZ"})",
                          R"({"engine": "\ud800"})", R"({"a": [1, 2, "engine": "x"})"}) {
    CAPTURE(bad);
    CHECK_FALSE(json_string_field(bad, "engine", &v, &why));
    CHECK_FALSE(why.empty());
  }
}

TEST_CASE("session hands Interrupt to the caller") {
  Session s(options());
  std::vector<proto::Header> out;
  auto h = msg(proto::MsgType::kInterrupt);
  h.id = 42;
  CHECK(s.on_message(h, Clock::now(), &out) == Session::Verdict::kInterrupt);
  CHECK(out.empty());
}

TEST_CASE("session epoch: unknown engine starts a new one") {
  Session s(options());
  std::vector<proto::Header> out;
  const auto t0 = Clock::now();
  s.on_message(msg(proto::MsgType::kRegisterReply, 0, 100), t0, &out);
  CHECK(s.epoch() == 0);
  s.on_message(msg(proto::MsgType::kError, 0, 0, "unknown engine: register again"), t0, &out);
  CHECK(s.epoch() == 1);
  // The reply to that Register (a restarted broker may give the same id).
  s.on_message(msg(proto::MsgType::kRegisterReply, 0, 100), t0, &out);
  CHECK(s.epoch() == 1);
}

TEST_CASE("session epoch: the same broker repeating our id keeps it") {
  Session s(options());
  std::vector<proto::Header> out;
  const auto t0 = Clock::now();
  s.on_message(msg(proto::MsgType::kRegisterReply, 3, 100, "abc"), t0, &out);
  s.on_tick(t0 + milliseconds(1000), &out);  // silent: registers again
  CHECK(s.state() == Session::State::kRegistering);
  s.on_message(msg(proto::MsgType::kRegisterReply, 3, 100, "abc"), t0 + milliseconds(1001), &out);
  CHECK(s.epoch() == 0);
  CHECK(s.registrations() == 2);
}

TEST_CASE("session epoch: another id or another incarnation starts a new one") {
  Session s(options());
  std::vector<proto::Header> out;
  const auto t0 = Clock::now();
  s.on_message(msg(proto::MsgType::kRegisterReply, 3, 100), t0, &out);
  s.on_message(msg(proto::MsgType::kRegisterReply, 5, 100), t0, &out);  // declared dead meanwhile
  CHECK(s.epoch() == 1);
  s.on_message(msg(proto::MsgType::kRegisterReply, 5, 100, "b2"), t0, &out);  // a restarted broker, same id
  CHECK(s.epoch() == 2);
  s.on_message(msg(proto::MsgType::kRegisterReply, 5, 100, "b2"), t0, &out);
  CHECK(s.epoch() == 2);
}

TEST_CASE("session waits for a silent broker forever by default") {
  Session s(options());
  std::vector<proto::Header> out;
  const auto t0 = Clock::now();
  s.on_message(msg(proto::MsgType::kRegisterReply, 0, 100), t0, &out);
  s.on_tick(t0 + std::chrono::hours(24), &out);
  CHECK(s.state() == Session::State::kRegistering);
  CHECK_FALSE(s.gave_up());
}

TEST_CASE("session gives up after broker_timeout of silence, not before") {
  auto o = options();
  o.broker_timeout = milliseconds(5000);
  Session s(o);
  std::vector<proto::Header> out;
  const auto t0 = Clock::now();
  s.on_tick(t0, &out);  // never heard: the silence starts now
  s.on_tick(t0 + milliseconds(4999), &out);
  CHECK_FALSE(s.gave_up());
  s.on_message(msg(proto::MsgType::kRegisterReply, 0, 100), t0 + milliseconds(4999), &out);
  s.on_tick(t0 + milliseconds(9997), &out);  // heard 4998 ms ago
  CHECK_FALSE(s.gave_up());
  s.on_tick(t0 + milliseconds(9999), &out);
  CHECK(s.gave_up());
  CHECK(s.state() == Session::State::kStopped);
  out.clear();
  s.on_tick(t0 + milliseconds(20000), &out);
  CHECK(out.empty());
}

TEST_CASE("connection file: curve section read, absent, or broken") {
  std::string_view obj;
  std::string why;
  CHECK(json_object_field(R"({"engine": "tcp://a", "curve": {"x": "}", "y": {"z": 1}}, "pid": 1})", "curve", &obj,
                          &why));
  CHECK(obj == R"({"x": "}", "y": {"z": 1}})");
  CHECK_FALSE(json_object_field(R"({"curve": "no"})", "curve", &obj, &why));
  CHECK_FALSE(json_object_field(R"({"curve": {"a": 1)", "curve", &obj, &why));
  CHECK_FALSE(json_object_field(R"({"engine": "x"})", "curve", &obj, &why));
}

namespace {

std::string write_temp(const std::string& body) {
  char path[] = "/tmp/zfarm-conn-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, body.data(), body.size()) == static_cast<ssize_t>(body.size()));
  ::close(fd);
  return path;
}

}  // namespace

TEST_CASE("connection file: engine keys taken from the curve section") {
  const std::string k1(40, 'a'), k2(40, 'b'), k3(40, 'c');
  const std::string good = write_temp(R"({"version": 1, "engine": "tcp://h:1", "curve": {"server_public": ")" + k1 +
                                      R"(", "server_secret": "s", "engine_public": ")" + k2 +
                                      R"(", "engine_secret": ")" + k3 + R"("}})");
  const std::string plain = write_temp(R"({"engine": "ipc:///x"})");
  const std::string missing = write_temp(R"({"engine": "tcp://h:1", "curve": {"server_public": ")" + k1 + R"("}})");
  const std::string short_key = write_temp(R"({"engine": "tcp://h:1", "curve": {"server_public": "abc", )"
                                           R"("engine_public": ")" + k2 + R"(", "engine_secret": ")" + k3 + R"("}})");
  ConnectionInfo info;
  std::string why;
  CHECK(read_connection_file(good, &info, &why));
  CHECK(info.curve);
  CHECK(info.engine == "tcp://h:1");
  CHECK(info.server_public == k1);
  CHECK(info.engine_public == k2);
  CHECK(info.engine_secret == k3);
  ConnectionInfo p;
  CHECK(read_connection_file(plain, &p, &why));
  CHECK_FALSE(p.curve);
  CHECK(p.engine == "ipc:///x");
  ConnectionInfo m;
  CHECK_FALSE(read_connection_file(missing, &m, &why));
  CHECK(why.find("engine_public") != std::string::npos);
  CHECK_FALSE(read_connection_file(short_key, &m, &why));
  CHECK(why.find("Z85") != std::string::npos);
  for (const auto& f : {good, plain, missing, short_key}) ::unlink(f.c_str());
}

TEST_CASE("session notes the broker's protocol revision from RegisterReply (0 when it names none)") {
  Session s(options());
  std::vector<proto::Header> out;
  const auto t0 = Clock::now();
  s.on_tick(t0, &out);
  CHECK(s.broker_revision() == 0);
  proto::Header reply = msg(proto::MsgType::kRegisterReply, 4, 100, "inc");
  reply.opts.revision = proto::kRevision;
  s.on_message(reply, t0, &out);
  CHECK(s.broker_revision() == proto::kRevision);
  // An older broker restarted on the same endpoint: no revision, no Output.
  s.on_message(msg(proto::MsgType::kError, 0, 0, "unknown engine: register again"), t0, &out);
  s.on_message(msg(proto::MsgType::kRegisterReply, 4, 100, "inc2"), t0, &out);
  CHECK(s.broker_revision() == 0);
}
