// OutputPipe units: when Output messages go, what they carry, and that a
// task printing nothing sends none.  The send callback decodes and records.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "output_pipe.hpp"

using namespace zfarm;
using namespace zfarm::engine;
using std::chrono::milliseconds;

namespace {

struct Sent {
  std::uint64_t id;
  std::int64_t engine;
  std::uint32_t flags;
  std::int64_t offset[2];
  std::string text[2];
};

struct Pipe {
  std::vector<Sent> sent;
  OutputPipe pipe{[this](Frames frames) {
    proto::Message m;
    REQUIRE(proto::decode(frames, 0, &m).ok());  // every message is a well-formed Output
    REQUIRE(m.header.type == proto::MsgType::kOutput);
    sent.push_back({m.header.id, m.header.aux, m.header.status, {m.header.targets[0], m.header.targets[1]},
                    {m.payload[0].to_string(), m.payload[1].to_string()}});
  }};
  OutputPipe::Clock::time_point t0 = OutputPipe::Clock::now();
  OutputPipe::Clock::time_point at(int ms) const { return t0 + milliseconds(ms); }
  std::string all(int stream) const {
    std::string s;
    for (const auto& m : sent) s += m.text[stream];
    return s;
  }
};

}  // namespace

TEST_CASE("output: a task that prints nothing sends nothing, however many ticks") {
  Pipe p;
  p.pipe.set_enabled(true);
  p.pipe.begin(7, 1);
  for (int ms = 0; ms < 1000; ms += 50) p.pipe.on_tick(p.at(ms));
  p.pipe.end();
  CHECK(p.sent.empty());
  CHECK(p.pipe.messages_sent() == 0);
}

TEST_CASE("output: text waits for the flush interval, then goes in one message with its offsets") {
  Pipe p;
  p.pipe.set_enabled(true);
  p.pipe.begin(7, 3);
  p.pipe.write(0, "first\n", false, p.at(0));
  p.pipe.write(1, "warn\n", false, p.at(10));
  p.pipe.on_tick(p.at(50));
  CHECK(p.sent.empty());  // younger than 100 ms
  p.pipe.on_tick(p.at(100));
  REQUIRE(p.sent.size() == 1);
  CHECK(p.sent[0].id == 7);
  CHECK(p.sent[0].engine == 3);
  CHECK(p.sent[0].flags == 0);
  CHECK(p.sent[0].text[0] == "first\n");
  CHECK(p.sent[0].text[1] == "warn\n");
  CHECK(p.sent[0].offset[0] == 0);
  CHECK(p.sent[0].offset[1] == 0);
  p.pipe.write(0, "second\n", false, p.at(150));
  p.pipe.on_tick(p.at(200));
  CHECK(p.sent.size() == 1);
  p.pipe.on_tick(p.at(250));
  REQUIRE(p.sent.size() == 2);
  CHECK(p.sent[1].text[0] == "second\n");
  CHECK(p.sent[1].text[1].empty());
  CHECK(p.sent[1].offset[0] == 6);
  CHECK(p.sent[1].offset[1] == 5);
}

TEST_CASE("output: what is pending at end() is dropped (the Result carries it)") {
  Pipe p;
  p.pipe.set_enabled(true);
  p.pipe.begin(1, 0);
  p.pipe.write(0, "tail", false, p.at(0));
  p.pipe.end();
  p.pipe.on_tick(p.at(500));
  CHECK(p.sent.empty());
}

TEST_CASE("output: nothing is streamed while the broker has not announced revision 1") {
  Pipe p;
  p.pipe.begin(1, 0);
  p.pipe.write(0, std::string(200000, 'x'), false, p.at(0));
  p.pipe.on_tick(p.at(500));
  p.pipe.end();
  CHECK(p.sent.empty());
}

TEST_CASE("output: writes outside a task are ignored") {
  Pipe p;
  p.pipe.set_enabled(true);
  p.pipe.write(0, "stray", false, p.at(0));
  p.pipe.on_tick(p.at(500));
  CHECK(p.sent.empty());
}

TEST_CASE("output: a large write goes at once, cut into chunks within the limit and at character boundaries") {
  Pipe p;
  p.pipe.set_enabled(true);
  p.pipe.begin(2, 0);
  // 3-byte characters, so a cut at exactly kMaxOutputChunk would split one.
  std::string text;
  while (text.size() < 3 * proto::kMaxOutputChunk) text += "\xe2\x82\xac";  // U+20AC
  p.pipe.write(0, text, false, p.at(0));
  REQUIRE(p.sent.size() >= 3);
  std::int64_t offset = 0;
  for (const auto& m : p.sent) {
    CHECK(m.text[0].size() <= proto::kMaxOutputChunk);
    CHECK(m.text[0].size() % 3 == 0);
    CHECK(m.offset[0] == offset);
    offset += static_cast<std::int64_t>(m.text[0].size());
  }
  CHECK(p.all(0) == text);
}

TEST_CASE("output: reaching the limit is flagged once, even with no new text") {
  Pipe p;
  p.pipe.set_enabled(true);
  p.pipe.begin(4, 0);
  p.pipe.write(1, "", true, p.at(0));
  p.pipe.on_tick(p.at(100));
  REQUIRE(p.sent.size() == 1);
  CHECK(p.sent[0].flags == proto::kStderrCapped);
  p.pipe.write(1, "", true, p.at(150));
  p.pipe.on_tick(p.at(300));
  CHECK(p.sent.size() == 1);  // nothing new to say
  p.pipe.write(0, "more", false, p.at(300));
  p.pipe.on_tick(p.at(400));
  REQUIRE(p.sent.size() == 2);
  CHECK(p.sent[1].flags == proto::kStderrCapped);  // flags stay set in later messages
}

TEST_CASE("output: a new task starts from offset 0 with no flags") {
  Pipe p;
  p.pipe.set_enabled(true);
  p.pipe.begin(1, 0);
  p.pipe.write(0, "abc", true, p.at(0));
  p.pipe.on_tick(p.at(100));
  p.pipe.end();
  p.pipe.begin(2, 0);
  p.pipe.write(0, "d", false, p.at(200));
  p.pipe.on_tick(p.at(300));
  REQUIRE(p.sent.size() == 2);
  CHECK(p.sent[1].id == 2);
  CHECK(p.sent[1].offset[0] == 0);
  CHECK(p.sent[1].flags == 0);
}

TEST_CASE("output: utf8_prefix never splits a character") {
  const std::string s = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";  // a, é, €, 😀: 1+2+3+4 bytes
  CHECK(utf8_prefix(s, 100) == s.size());
  CHECK(utf8_prefix(s, 1) == 1);
  CHECK(utf8_prefix(s, 2) == 1);
  CHECK(utf8_prefix(s, 3) == 3);
  CHECK(utf8_prefix(s, 5) == 3);
  CHECK(utf8_prefix(s, 6) == 6);
  CHECK(utf8_prefix(s, 9) == 6);
  CHECK(utf8_prefix(std::string(8, '\x80'), 4) == 4);  // not UTF-8: cut where asked
}
