// Session and connection-file units, beside the code they test.  The
// Session has no socket, so each case feeds it messages and clock ticks.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

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
