// The codec in common/protocol.cpp: a round trip, then each way a message can
// be malformed, one case per test, each checking the error code.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <msgpack.hpp>

#include "protocol.hpp"

using namespace zfarm;
using proto::DecodeError;

namespace {

std::vector<zmq::message_t> frames_of(std::initializer_list<std::string> parts) {
  std::vector<zmq::message_t> f;
  for (const auto& p : parts) f.emplace_back(p.data(), p.size());
  return f;
}

std::string signature(std::uint8_t version = proto::kVersion) {
  return std::string("ZFRM", 4) + static_cast<char>(version);
}

// A header frame built by hand, for shapes encode() would never produce.
template <typename F>
std::string packed(F&& fill) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  fill(pk);
  return std::string(buf.data(), buf.size());
}

std::string good_header() {
  std::vector<zmq::message_t> f;
  proto::Header h;
  h.type = proto::MsgType::kHeartbeat;
  proto::encode_header(h, f);
  return f[1].to_string();
}

DecodeError decode_parts(std::initializer_list<std::string> parts) {
  auto f = frames_of(parts);
  proto::Message m;
  return proto::decode(f, 0, &m).code;
}

DecodeError decode_raw(const std::string& header) {
  proto::Header h;
  return proto::decode_header(header.data(), header.size(), &h, proto::Limits{}).code;
}

}  // namespace

TEST_CASE("RoundTrip keeps every header field and moves the payload") {
  proto::Header h;
  h.type = proto::MsgType::kSubmit;
  h.id = 0xfedcba9876543210ull;
  h.targets = {0, 3, -1, 1LL << 40};
  h.status = 4000000000u;
  h.aux = -7;
  h.text = "hello \xc3\xa9";
  std::vector<zmq::message_t> payload;
  payload.emplace_back("abc", 3);
  payload.emplace_back(std::string(100000, 'x').data(), 100000);
  const void* big = payload[1].data();
  auto frames = proto::encode(h, std::move(payload));
  REQUIRE(frames.size() == 4);

  // With a routing envelope in front, as a ROUTER delivers it.
  std::vector<zmq::message_t> wire;
  wire.emplace_back("peer", 4);
  for (auto& f : frames) wire.push_back(std::move(f));
  proto::Message m;
  proto::Status st = proto::decode(wire, 1, &m);
  REQUIRE(st.ok());
  CHECK(m.header.type == proto::MsgType::kSubmit);
  CHECK(m.header.id == h.id);
  CHECK(m.header.targets == h.targets);
  CHECK(m.header.status == h.status);
  CHECK(m.header.aux == -7);
  CHECK(m.header.text == h.text);
  REQUIRE(m.payload.size() == 2);
  CHECK(m.payload[0].to_string() == "abc");
  CHECK(m.payload[1].size() == 100000);
  CHECK(m.payload[1].data() == big);  // moved, not copied
}

TEST_CASE("RoundTrip of every message type") {
  for (int t = 1; t <= proto::kMaxMsgType; ++t) {
    CAPTURE(t);
    proto::Header h;
    h.type = static_cast<proto::MsgType>(t);
    std::vector<zmq::message_t> payload;
    const bool output = h.type == proto::MsgType::kOutput;
    const bool batch = h.type == proto::MsgType::kBatch;
    if (output) {  // the types with a fixed shape
      h.targets = {0, 0};
      payload.emplace_back();
      payload.emplace_back();
    }
    if (batch) {
      h.aux = 1;
      payload.emplace_back();
    }
    auto f = proto::encode(h, std::move(payload));
    proto::Message m;
    REQUIRE(proto::decode(f, 0, &m).ok());
    CHECK(static_cast<int>(m.header.type) == t);
    CHECK(m.payload.size() == (output ? 2u : batch ? 1u : 0u));
  }
}

TEST_CASE("TooFewFrames: no frames, signature alone, envelope alone") {
  CHECK(decode_parts({}) == DecodeError::kTooFewFrames);
  CHECK(decode_parts({signature()}) == DecodeError::kTooFewFrames);
  auto f = frames_of({"peer", signature()});
  proto::Message m;
  CHECK(proto::decode(f, 1, &m).code == DecodeError::kTooFewFrames);
}

TEST_CASE("TooManyFrames: more than Limits::max_frames") {
  proto::Limits limits;
  limits.max_frames = 4;
  auto f = frames_of({signature(), good_header(), "a", "b", "c"});
  proto::Message m;
  CHECK(proto::decode(f, 0, &m, limits).code == DecodeError::kTooManyFrames);
  auto ok = frames_of({signature(), good_header(), "a", "b"});
  CHECK(proto::decode(ok, 0, &m, limits).ok());
}

TEST_CASE("BadSignature: wrong magic, short and long signature frames") {
  CHECK(decode_parts({std::string("ZFRX\x01", 5), good_header()}) == DecodeError::kBadSignature);
  CHECK(decode_parts({"ZFR", good_header()}) == DecodeError::kBadSignature);
  CHECK(decode_parts({signature() + "x", good_header()}) == DecodeError::kBadSignature);
  CHECK(decode_parts({"", good_header()}) == DecodeError::kBadSignature);
}

TEST_CASE("WrongVersion: version 0, 2 and 255") {
  CHECK(decode_parts({signature(0), good_header()}) == DecodeError::kWrongVersion);
  CHECK(decode_parts({signature(2), good_header()}) == DecodeError::kWrongVersion);
  CHECK(decode_parts({signature(255), good_header()}) == DecodeError::kWrongVersion);
}

TEST_CASE("HeaderTooLarge: a header frame over Limits::max_header_bytes") {
  proto::Limits limits;
  std::string huge(limits.max_header_bytes + 1, '\x90');
  CHECK(decode_parts({signature(), huge}) == DecodeError::kHeaderTooLarge);
}

TEST_CASE("BadMsgpack: garbage bytes") {
  CHECK(decode_raw(std::string("\xc1\xc1\xc1", 3)) == DecodeError::kBadMsgpack);  // 0xc1 is never used
  CHECK(decode_parts({signature(), std::string("\xc1", 1)}) == DecodeError::kBadMsgpack);
}

TEST_CASE("BadMsgpack: truncated header") {
  const std::string h = good_header();
  for (std::size_t n = 0; n < h.size(); ++n) {
    CAPTURE(n);
    CHECK(decode_raw(h.substr(0, n)) == DecodeError::kBadMsgpack);
  }
}

TEST_CASE("BadMsgpack: trailing bytes after the header") {
  CHECK(decode_raw(good_header() + "x") == DecodeError::kBadMsgpack);
}

TEST_CASE("BadMsgpack: 5 bytes announcing a huge array fail fast without allocating") {
  // array32 with 2^32-1 items; unpacking it for real would need ~100 GiB.
  const std::string bomb("\xdd\xff\xff\xff\xff", 5);
  CHECK(decode_raw(bomb) == DecodeError::kBadMsgpack);
  // Also a huge map and a huge string.
  CHECK(decode_raw(std::string("\xdf\xff\xff\xff\xff", 5)) == DecodeError::kBadMsgpack);
  CHECK(decode_raw(std::string("\xdb\xff\xff\xff\xff", 5)) == DecodeError::kBadMsgpack);
  // Inside a well-formed outer array: a targets array announcing 2^32-1 items.
  const std::string nested = std::string("\x96\x03\x00", 3) + bomb;
  CHECK(decode_raw(nested) == DecodeError::kBadMsgpack);
}

TEST_CASE("BadHeaderShape: not an array") {
  CHECK(decode_raw(packed([](auto& pk) { pk.pack_map(0); })) == DecodeError::kBadHeaderShape);
  CHECK(decode_raw(packed([](auto& pk) { pk.pack(3); })) == DecodeError::kBadHeaderShape);
  CHECK(decode_raw(packed([](auto& pk) { pk.pack(std::string("hi")); })) == DecodeError::kBadHeaderShape);
}

TEST_CASE("BadHeaderShape: array too short") {
  CHECK(decode_raw(packed([](auto& pk) { pk.pack_array(0); })) == DecodeError::kBadHeaderShape);
  CHECK(decode_raw(packed([](auto& pk) {
          pk.pack_array(5);
          pk.pack(3), pk.pack(0), pk.pack_array(0), pk.pack(0), pk.pack(0);
        })) == DecodeError::kBadHeaderShape);
}

namespace {

// A six-item header with one field replaced by a string.
std::string header_with_string_at(int field) {
  return packed([field](auto& pk) {
    pk.pack_array(6);
    for (int i = 0; i < 6; ++i) {
      if (i == field && i != 5) {
        pk.pack(std::string("bad"));
        continue;
      }
      switch (i) {
        case 0: pk.pack(3); break;
        case 1: pk.pack(0); break;
        case 2: pk.pack_array(0); break;
        case 3: pk.pack(0); break;
        case 4: pk.pack(0); break;
        case 5:
          if (field == 5) {
            pk.pack(42);  // text must be a string; give an integer
          } else {
            pk.pack(std::string(""));
          }
          break;
      }
    }
  });
}

}  // namespace

TEST_CASE("BadHeaderShape: wrong field types") {
  for (int field = 0; field < 6; ++field) {
    CAPTURE(field);
    CHECK(decode_raw(header_with_string_at(field)) == DecodeError::kBadHeaderShape);
  }
  // Negative id, a string in targets, a status over 32 bits.
  CHECK(decode_raw(packed([](auto& pk) {
          pk.pack_array(6);
          pk.pack(3), pk.pack(-1), pk.pack_array(0), pk.pack(0), pk.pack(0), pk.pack(std::string(""));
        })) == DecodeError::kBadHeaderShape);
  CHECK(decode_raw(packed([](auto& pk) {
          pk.pack_array(6);
          pk.pack(3), pk.pack(0);
          pk.pack_array(1), pk.pack(std::string("x"));
          pk.pack(0), pk.pack(0), pk.pack(std::string(""));
        })) == DecodeError::kBadHeaderShape);
  CHECK(decode_raw(packed([](auto& pk) {
          pk.pack_array(6);
          pk.pack(3), pk.pack(0), pk.pack_array(0), pk.pack(std::uint64_t{1} << 33), pk.pack(0),
              pk.pack(std::string(""));
        })) == DecodeError::kBadHeaderShape);
}

// decode_header reads the common 6-item header on a fast path and anything
// else with the general msgpack decoder: both must give the same header.
TEST_CASE("FastPath: every integer width msgpack allows gives the same header") {
  const std::string h = packed([](auto& pk) {
    pk.pack_array(6);
    pk.pack_int8(6);                  // type Result as a signed byte
    pk.pack_uint64(1099511627776ULL);  // id
    pk.pack_array(4);
    pk.pack_int16(-1), pk.pack_int64(std::int64_t{1} << 40), pk.pack_uint8(7), pk.pack_int32(-70000);
    pk.pack_uint32(4000000000U);  // status
    pk.pack_int64(-5);            // aux
    pk.pack_str(3), pk.pack_str_body("abc", 3);
  });
  proto::Header out;
  out.opts.priority = 9;  // left from an earlier message: reset
  REQUIRE(proto::decode_header(h.data(), h.size(), &out, proto::Limits{}).ok());
  CHECK(out.type == proto::MsgType::kResult);
  CHECK(out.id == 1099511627776ULL);
  CHECK(out.targets == std::vector<std::int64_t>{-1, std::int64_t{1} << 40, 7, -70000});
  CHECK(out.status == 4000000000U);
  CHECK(out.aux == -5);
  CHECK(out.text == "abc");
  CHECK(out.opts.empty());
}

TEST_CASE("Encoder: a plain header has the bytes msgpack-c's packer writes, at every integer width") {
  // The encoder writes headers without options into a fixed buffer of its
  // own; what it writes must be what the general path (an sbuffer) writes,
  // byte for byte (the wire is unchanged).
  const std::vector<std::int64_t> ints = {0,       1,       31,      32,      127,        128,        255,
                                          256,     65535,   65536,   -1,      -31,        -32,        -33,
                                          -127,    -128,    -129,    -32767,  -32768,     -32769,     4294967295LL,
                                          4294967296LL,     -2147483647LL - 1, -2147483647LL - 2,
                                          std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::min()};
  const std::vector<std::size_t> text_sizes = {0, 31, 32, 255, 256, 400};
  for (std::size_t k = 0; k < ints.size(); ++k) {
    const std::int64_t v = ints[k];
    const auto u = static_cast<std::uint64_t>(v);
    proto::Header h;
    h.type = proto::MsgType::kResult;
    h.id = u;
    h.targets.assign(k % 17, v);  // 0 to 16 targets: a fixarray and an array16
    h.status = static_cast<std::uint32_t>(u);
    h.aux = v;
    h.text.assign(text_sizes[k % text_sizes.size()], 'x');
    CAPTURE(v);
    CAPTURE(h.targets.size());
    CAPTURE(h.text.size());
    // The oracle: msgpack-c's own adaptors for a tuple of the six items
    // (each integer in its shortest form, as the protocol writes them).
    const std::string want = packed([&](auto& pk) {
      pk.pack(std::make_tuple(static_cast<std::uint8_t>(h.type), h.id, h.targets, h.status, h.aux, h.text));
    });
    std::vector<zmq::message_t> f;
    proto::encode_header(h, f);
    REQUIRE(f.size() == 2);
    CHECK(f[0].to_string() == signature());
    CHECK(f[1].to_string() == want);
  }
}

TEST_CASE("FastPath: a text as str8, str16 and str32 reads the same") {
  for (int width : {8, 16, 32}) {
    CAPTURE(width);
    std::string h = packed([](auto& pk) {
      pk.pack_array(6);
      pk.pack(3), pk.pack(0), pk.pack_array(0), pk.pack(0), pk.pack(0);
    });
    const std::string text = "hello";
    if (width == 8) h += std::string("\xd9\x05", 2);
    if (width == 16) h += std::string("\xda\x00\x05", 3);
    if (width == 32) h += std::string("\xdb\x00\x00\x00\x05", 5);
    h += text;
    proto::Header out;
    REQUIRE(proto::decode_header(h.data(), h.size(), &out, proto::Limits{}).ok());
    CHECK(out.text == text);
  }
}

TEST_CASE("FastPath: limits and errors are those of the general decoder") {
  proto::Limits small;
  small.max_targets = 2;
  small.max_text_bytes = 4;
  const std::string three_targets = packed([](auto& pk) {
    pk.pack_array(6);
    pk.pack(4), pk.pack(1), pk.pack_array(3), pk.pack(0), pk.pack(1), pk.pack(2), pk.pack(0), pk.pack(0),
        pk.pack(std::string(""));
  });
  const std::string long_text = packed([](auto& pk) {
    pk.pack_array(6);
    pk.pack(4), pk.pack(1), pk.pack_array(0), pk.pack(0), pk.pack(0), pk.pack(std::string("12345"));
  });
  proto::Header out;
  CHECK(proto::decode_header(three_targets.data(), three_targets.size(), &out, small).code ==
        DecodeError::kBadHeaderShape);
  CHECK(proto::decode_header(long_text.data(), long_text.size(), &out, small).code == DecodeError::kBadMsgpack);
  // A target over the int64 range, a negative status: refused as before.
  CHECK(decode_raw(packed([](auto& pk) {
          pk.pack_array(6);
          pk.pack(4), pk.pack(1), pk.pack_array(1), pk.pack_uint64(~std::uint64_t{0}), pk.pack(0), pk.pack(0),
              pk.pack(std::string(""));
        })) == DecodeError::kBadHeaderShape);
  CHECK(decode_raw(packed([](auto& pk) {
          pk.pack_array(6);
          pk.pack(4), pk.pack(1), pk.pack_array(0), pk.pack(-1), pk.pack(0), pk.pack(std::string(""));
        })) == DecodeError::kBadHeaderShape);
  // Every truncation of a good header fails.
  const std::string good = packed([](auto& pk) {
    pk.pack_array(6);
    pk.pack(4), pk.pack_uint64(1099511627776ULL), pk.pack_array(1), pk.pack(-1), pk.pack(0), pk.pack(0),
        pk.pack(std::string("abc"));
  });
  for (std::size_t n = 0; n < good.size(); ++n) {
    CAPTURE(n);
    CHECK_FALSE(proto::decode_header(good.data(), n, &out, proto::Limits{}).ok());
  }
  CHECK(proto::decode_header(good.data(), good.size(), &out, proto::Limits{}).ok());
}

TEST_CASE("RoundTrip: a decoded Result's payload is encoded again in its own storage, in order") {
  proto::Header h;
  h.type = proto::MsgType::kResult;
  h.id = 42;
  std::vector<zmq::message_t> payload;
  payload.emplace_back(std::string("one").data(), 3);
  payload.emplace_back(std::string("two").data(), 3);
  auto wire = proto::encode(h, std::move(payload));
  proto::Message m;
  REQUIRE(proto::decode(wire, 0, &m).ok());
  REQUIRE(m.payload.capacity() >= m.payload.size() + 2);  // decode left room for forwarding
  const zmq::message_t* storage = m.payload.data();
  h.aux = 7;
  auto again = proto::encode(h, std::move(m.payload));
  CHECK(again.data() == storage);  // no new vector
  proto::Message back;
  REQUIRE(proto::decode(again, 0, &back).ok());
  CHECK(back.header.id == 42);
  CHECK(back.header.aux == 7);
  REQUIRE(back.payload.size() == 2);
  CHECK(back.payload[0].to_string() == "one");
  CHECK(back.payload[1].to_string() == "two");
}

TEST_CASE("UnknownType: 0 and 200") {
  for (int t : {0, 200}) {
    CAPTURE(t);
    const std::string h = packed([t](auto& pk) {
      pk.pack_array(6);
      pk.pack(t), pk.pack(0), pk.pack_array(0), pk.pack(0), pk.pack(0), pk.pack(std::string(""));
    });
    CHECK(decode_raw(h) == DecodeError::kUnknownType);
    CHECK(decode_parts({signature(), h}) == DecodeError::kUnknownType);
  }
}

TEST_CASE("every error has a name and a detail") {
  proto::Message m;
  auto f = frames_of({"ZFR", good_header()});
  proto::Status st = proto::decode(f, 0, &m);
  CHECK_FALSE(st.ok());
  CHECK_FALSE(st.detail.empty());
  CHECK(std::string(proto::to_string(st.code)) == "bad signature");
}

TEST_CASE("Options: a round trip of every field, and none written when unset") {
  proto::Header h;
  h.type = proto::MsgType::kSubmit;
  h.id = 9;
  h.targets = {proto::kLoadBalanced};
  h.opts.retries = 2;
  h.opts.timeout_ms = 1500;
  h.opts.priority = -3;
  h.opts.after = {1, std::uint64_t{1} << 62};
  h.opts.follow = {7};
  h.opts.engines = {0, 4};
  h.opts.ids = {5, 6, 7};
  h.opts.session = "s-1";
  auto f = proto::encode(h);
  proto::Message m;
  REQUIRE(proto::decode(f, 0, &m).ok());
  CHECK(m.header.opts.retries == 2);
  CHECK(m.header.opts.timeout_ms == 1500);
  CHECK(m.header.opts.priority == -3);
  CHECK(m.header.opts.after == h.opts.after);
  CHECK(m.header.opts.follow == h.opts.follow);
  CHECK(m.header.opts.engines == h.opts.engines);
  CHECK(m.header.opts.ids == h.opts.ids);
  CHECK(m.header.opts.session == "s-1");

  proto::Header plain;
  plain.type = proto::MsgType::kHeartbeat;
  std::vector<zmq::message_t> g;
  proto::encode_header(plain, g);
  msgpack::object_handle oh = msgpack::unpack(static_cast<const char*>(g[1].data()), g[1].size());
  CHECK(oh.get().via.array.size == 6);
}

TEST_CASE("Options: unknown keys are ignored, known keys of the wrong type are refused") {
  auto with_opts = [](auto fill) {
    return packed([&](auto& pk) {
      pk.pack_array(7);
      pk.pack(4), pk.pack(1), pk.pack_array(0), pk.pack(0), pk.pack(0), pk.pack(std::string(""));
      fill(pk);
    });
  };
  proto::Header h;
  const std::string unknown = with_opts([](auto& pk) {
    pk.pack_map(2);
    pk.pack(std::string("from_the_future")), pk.pack(std::string("x"));
    pk.pack(std::string("priority")), pk.pack(5);
  });
  REQUIRE(proto::decode_header(unknown.data(), unknown.size(), &h, proto::Limits{}).ok());
  CHECK(h.opts.priority == 5);

  CHECK(decode_raw(with_opts([](auto& pk) { pk.pack(3); })) == DecodeError::kBadHeaderShape);
  CHECK(decode_raw(with_opts([](auto& pk) {
          pk.pack_map(1), pk.pack(std::string("retries")), pk.pack(std::string("two"));
        })) == DecodeError::kBadHeaderShape);
  CHECK(decode_raw(with_opts([](auto& pk) {
          pk.pack_map(1), pk.pack(std::string("after")), pk.pack_array(1), pk.pack(-1);
        })) == DecodeError::kBadHeaderShape);
  CHECK(decode_raw(with_opts([](auto& pk) {
          pk.pack_map(1), pk.pack(std::string("session")), pk.pack(12);
        })) == DecodeError::kBadHeaderShape);
  // An eighth item is not a header either.
  CHECK(decode_raw(packed([](auto& pk) {
          pk.pack_array(8);
          pk.pack(4), pk.pack(1), pk.pack_array(0), pk.pack(0), pk.pack(0), pk.pack(std::string(""));
          pk.pack_map(0), pk.pack(0);
        })) == DecodeError::kBadHeaderShape);
}

TEST_CASE("Options: a list longer than Limits::max_ids is refused before use") {
  proto::Limits limits;
  limits.max_ids = 3;
  const std::string h = packed([](auto& pk) {
    pk.pack_array(7);
    pk.pack(14), pk.pack(1), pk.pack_array(0), pk.pack(0), pk.pack(0), pk.pack(std::string(""));
    pk.pack_map(1), pk.pack(std::string("ids")), pk.pack_array(4);
    for (int i = 0; i < 4; ++i) pk.pack(i);
  });
  proto::Header out;
  CHECK(proto::decode_header(h.data(), h.size(), &out, limits).code == DecodeError::kBadHeaderShape);
}

TEST_CASE("every message type and result status has a name") {
  for (int t = 1; t <= proto::kMaxMsgType; ++t) {
    CAPTURE(t);
    CHECK(std::string(proto::to_string(static_cast<proto::MsgType>(t))) != "unknown");
  }
  for (int s = 0; s <= 7; ++s) {
    CAPTURE(s);
    CHECK(std::string(proto::to_string(static_cast<proto::ResultStatus>(s))) != "unknown");
  }
}

// ---- Output (revision 1) ------------------------------------------------------

namespace {

// An Output with the given offsets, flags and payload chunks.
std::vector<zmq::message_t> output_frames(std::vector<std::int64_t> offsets, std::uint32_t flags,
                                          std::vector<std::string> chunks) {
  proto::Header h;
  h.type = proto::MsgType::kOutput;
  h.id = 42;
  h.aux = 3;
  h.status = flags;
  h.targets = std::move(offsets);
  std::vector<zmq::message_t> payload;
  for (const auto& c : chunks) payload.emplace_back(c.data(), c.size());
  return proto::encode(h, std::move(payload));  // encode does not judge the shape
}

DecodeError decode_output(std::vector<std::int64_t> offsets, std::uint32_t flags,
                          std::vector<std::string> chunks) {
  auto f = output_frames(std::move(offsets), flags, std::move(chunks));
  proto::Message m;
  return proto::decode(f, 0, &m).code;
}

}  // namespace

TEST_CASE("Output: a round trip keeps the task, engine, offsets, flags and both chunks") {
  auto f = output_frames({12, 0}, proto::kStdoutCapped, {"line \xc3\xa9\n", ""});
  proto::Message m;
  REQUIRE(proto::decode(f, 0, &m).ok());
  CHECK(m.header.type == proto::MsgType::kOutput);
  CHECK(m.header.id == 42);
  CHECK(m.header.aux == 3);
  CHECK(m.header.status == proto::kStdoutCapped);
  CHECK(m.header.targets == std::vector<std::int64_t>{12, 0});
  REQUIRE(m.payload.size() == 2);
  CHECK(m.payload[0].to_string() == "line \xc3\xa9\n");
  CHECK(m.payload[1].size() == 0);
  // Chunks of exactly the limit are fine.
  CHECK(decode_output({0, 0}, 0, {std::string(proto::kMaxOutputChunk, 'x'), std::string(proto::kMaxOutputChunk, 'y')}) ==
        DecodeError::kNone);
  CHECK(decode_output({0, 0}, proto::kStdoutCapped | proto::kStderrCapped, {"", ""}) == DecodeError::kNone);
}

TEST_CASE("BadOutput: not exactly two payload frames") {
  CHECK(decode_output({0, 0}, 0, {}) == DecodeError::kBadOutput);
  CHECK(decode_output({0, 0}, 0, {"only stdout"}) == DecodeError::kBadOutput);
  CHECK(decode_output({0, 0}, 0, {"a", "b", "c"}) == DecodeError::kBadOutput);
}

TEST_CASE("BadOutput: a chunk over kMaxOutputChunk") {
  CHECK(decode_output({0, 0}, 0, {std::string(proto::kMaxOutputChunk + 1, 'x'), ""}) == DecodeError::kBadOutput);
  CHECK(decode_output({0, 0}, 0, {"", std::string(proto::kMaxOutputChunk + 1, 'x')}) == DecodeError::kBadOutput);
}

TEST_CASE("BadOutput: offsets missing, extra or negative") {
  CHECK(decode_output({}, 0, {"a", ""}) == DecodeError::kBadOutput);
  CHECK(decode_output({0}, 0, {"a", ""}) == DecodeError::kBadOutput);
  CHECK(decode_output({0, 0, 0}, 0, {"a", ""}) == DecodeError::kBadOutput);
  CHECK(decode_output({-1, 0}, 0, {"a", ""}) == DecodeError::kBadOutput);
  CHECK(decode_output({0, -5}, 0, {"a", ""}) == DecodeError::kBadOutput);
}

TEST_CASE("BadOutput: unknown flags") {
  CHECK(decode_output({0, 0}, 4, {"a", ""}) == DecodeError::kBadOutput);
  CHECK(decode_output({0, 0}, 0x80000000u, {"a", ""}) == DecodeError::kBadOutput);
}

TEST_CASE("BadOutput: check_output judges a header and payload on their own, with a detail") {
  proto::Header h;
  h.type = proto::MsgType::kOutput;
  h.targets = {0, 0};
  std::vector<zmq::message_t> one;
  one.emplace_back("x", 1);
  const proto::Status st = proto::check_output(h, one);
  CHECK(st.code == DecodeError::kBadOutput);
  CHECK_FALSE(st.detail.empty());
  CHECK(std::string(proto::to_string(st.code)) == "bad output message");
}

TEST_CASE("Options: revision round trip; absent is 0; the wrong type is refused") {
  proto::Header h;
  h.type = proto::MsgType::kWelcome;
  h.opts.revision = proto::kRevision;
  auto f = proto::encode(h);
  proto::Message m;
  REQUIRE(proto::decode(f, 0, &m).ok());
  CHECK(m.header.opts.revision == proto::kRevision);
  CHECK_FALSE(m.header.opts.empty());

  proto::Header plain;
  plain.type = proto::MsgType::kWelcome;
  auto g = proto::encode(plain);
  REQUIRE(proto::decode(g, 0, &m).ok());
  CHECK(m.header.opts.revision == 0);

  CHECK(decode_raw(packed([](auto& pk) {
          pk.pack_array(7);
          pk.pack(17), pk.pack(0), pk.pack_array(0), pk.pack(0), pk.pack(0), pk.pack(std::string(""));
          pk.pack_map(1), pk.pack(std::string("revision")), pk.pack(std::string("one"));
        })) == DecodeError::kBadHeaderShape);
}

// ---- Result timing (revision 3) ---------------------------------------------

namespace {

// A Result with these targets, encoded and decoded again.
proto::Header result_with_targets(std::vector<std::int64_t> targets) {
  proto::Header h;
  h.type = proto::MsgType::kResult;
  h.id = 7;
  h.aux = 1;
  h.targets = std::move(targets);
  auto f = proto::encode(h);
  proto::Message m;
  REQUIRE(proto::decode(f, 0, &m).ok());
  return m.header;
}

}  // namespace

TEST_CASE("Timing: a round trip keeps the start and the run time, on the plain header's fast path") {
  proto::Header h;
  h.type = proto::MsgType::kResult;
  h.id = 42;
  const proto::Timing t{1'764'400'000'123'456, 2'500'000'001};  // 2025-11-29, 2.5 s
  proto::put_timing(t, &h);
  CHECK(h.targets == std::vector<std::int64_t>{t.started_us, t.run_ns});
  auto f = proto::encode(h);
  proto::Message m;
  REQUIRE(proto::decode(f, 0, &m).ok());
  proto::Timing back;
  CHECK(proto::read_timing(m.header, &back) == proto::TimingField::kOk);
  CHECK(back.started_us == t.started_us);
  CHECK(back.run_ns == t.run_ns);
  CHECK(back.present());
  // The same bytes as any 6-item header: the fast reader takes it.
  proto::Header fast;
  CHECK(proto::decode_header(f[1].data(), f[1].size(), &fast, proto::Limits{}).ok());
  CHECK(fast.targets == h.targets);
}

TEST_CASE("Timing: zero start and zero run time are valid; putting an absent timing clears the targets") {
  proto::Timing t;
  CHECK(!t.present());
  CHECK(proto::read_timing(result_with_targets({0, 0}), &t) == proto::TimingField::kOk);
  CHECK(t.present());
  CHECK(t.run_ns == 0);
  proto::Header h;
  h.targets = {1, 2};
  proto::put_timing(proto::Timing{}, &h);
  CHECK(h.targets.empty());
}

TEST_CASE("Timing: empty targets are no timing (an older engine or broker)") {
  proto::Timing t{5, 5};
  CHECK(proto::read_timing(result_with_targets({}), &t) == proto::TimingField::kAbsent);
  CHECK(!t.present());
}

TEST_CASE("Timing: short, long, negative or out-of-range fields are malformed, never a crash") {
  const std::vector<std::vector<std::int64_t>> bad = {
      {1},                                                     // short: no run time
      {1, 2, 3},                                               // too long
      {-1, 5},                                                 // negative start
      {5, -1},                                                 // negative run time
      {std::numeric_limits<std::int64_t>::min(), 0},           // the most negative
      {proto::kMaxTimestampUs + 1, 0},                         // starts after year 9999
      {proto::kMaxTimestampUs, 1000},                          // ends after it
      {proto::kMaxTimestampUs - 10, 11'000},                   // ends 1 us after it
      {std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::max()},
  };
  for (const auto& targets : bad) {
    CAPTURE(targets.size());
    proto::Timing t{5, 5};
    CHECK(proto::read_timing(result_with_targets(targets), &t) == proto::TimingField::kMalformed);
    CHECK(!t.present());  // nothing half-read is left behind
  }
  proto::Timing t;
  CHECK(proto::read_timing(result_with_targets({proto::kMaxTimestampUs, 0}), &t) == proto::TimingField::kOk);
  CHECK(proto::read_timing(result_with_targets({proto::kMaxTimestampUs - 1, 999}), &t) == proto::TimingField::kOk);
}

TEST_CASE("Timing: a Result header whose targets are not integers is refused by the decoder") {
  const std::string bad = packed([](auto& pk) {
    pk.pack_array(6);
    pk.pack(6);
    pk.pack(1);
    pk.pack_array(2);
    pk.pack("x");
    pk.pack(1.5);
    pk.pack(0);
    pk.pack(0);
    pk.pack("");
  });
  CHECK(decode_raw(bad) == DecodeError::kBadHeaderShape);
}

// ---- Batch (revision 4) -------------------------------------------------------

namespace {

std::vector<zmq::message_t> task_message(proto::MsgType type, std::uint64_t id,
                                         std::initializer_list<std::string> payload) {
  proto::Header h;
  h.type = type;
  h.id = id;
  h.targets = {proto::kLoadBalanced};
  h.text = "t" + std::to_string(id);
  if (id % 2 == 1) h.opts.priority = static_cast<std::int64_t>(id);  // some records with options
  std::vector<zmq::message_t> p;
  for (const auto& s : payload) p.emplace_back(s.data(), s.size());
  return proto::encode(h, std::move(p));
}

// A batch's body written by hand: records of (header bytes, payload frames).
std::string body_of(const std::vector<std::vector<std::string>>& records) {
  std::string b;
  auto u32 = [&](std::size_t v) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<char>((v >> s) & 0xff));
  };
  for (const auto& r : records) {
    u32(r.size());
    for (const auto& f : r) {
      u32(f.size());
      b += f;
    }
  }
  return b;
}

std::string header_bytes(proto::MsgType type, std::uint64_t id = 1) {
  std::vector<zmq::message_t> f;
  proto::Header h;
  h.type = type;
  h.id = id;
  proto::encode_header(h, f);
  return f[1].to_string();
}

// Decodes a Batch message of `n` records with the given body.
proto::Status decode_body(std::int64_t n, const std::string& body, std::vector<proto::Message>& out,
                          const proto::Limits& limits = proto::Limits{}) {
  proto::Header h;
  h.type = proto::MsgType::kBatch;
  h.aux = n;
  std::vector<zmq::message_t> payload;
  payload.emplace_back(body.data(), body.size());
  auto f = proto::encode(h, std::move(payload));
  proto::Message m;
  const proto::Status st = proto::decode(f, 0, &m, limits);
  if (!st.ok()) return st;
  return proto::decode_batch(m, out, limits);
}

}  // namespace

TEST_CASE("Batch: records come back in order with their headers and payload frames") {
  std::vector<std::vector<zmq::message_t>> msgs;
  msgs.push_back(task_message(proto::MsgType::kSubmit, 7, {"payload of 7"}));
  msgs.push_back(task_message(proto::MsgType::kResult, 8, {}));
  msgs.push_back(task_message(proto::MsgType::kTask, 9, {"a", "", std::string(proto::kBatchRecordBytes - 1, 'z')}));
  std::vector<const std::vector<zmq::message_t>*> refs;
  std::size_t bytes = 0;
  for (const auto& m : msgs) refs.push_back(&m), bytes += proto::batch_bytes(m);
  auto wire = proto::pack_batch(refs);
  REQUIRE(wire.size() == 3);
  CHECK(wire[2].size() == bytes);
  CHECK(msgs[0][2].to_string() == "payload of 7");  // the messages are only read

  proto::Message batch;
  REQUIRE(proto::decode(wire, 0, &batch).ok());
  CHECK(batch.header.type == proto::MsgType::kBatch);
  CHECK(batch.header.aux == 3);
  std::vector<proto::Message> out;
  REQUIRE(proto::decode_batch(batch, out).ok());
  REQUIRE(out.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    proto::Message single;
    REQUIRE(proto::decode(msgs[i], 0, &single).ok());
    CHECK(out[i].header.type == single.header.type);
    CHECK(out[i].header.id == single.header.id);
    CHECK(out[i].header.text == single.header.text);
    CHECK(out[i].header.targets == single.header.targets);
    CHECK(out[i].header.opts.priority == single.header.opts.priority);
    REQUIRE(out[i].payload.size() == single.payload.size());
    for (std::size_t k = 0; k < single.payload.size(); ++k) {
      CHECK(out[i].payload[k].to_string() == single.payload[k].to_string());
    }
  }
  // The storage of `out` is reused: a second, shorter batch resizes it.
  auto wire2 = proto::pack_batch({refs[2]});
  REQUIRE(proto::decode(wire2, 0, &batch).ok());
  REQUIRE(proto::decode_batch(batch, out).ok());
  REQUIRE(out.size() == 1);
  CHECK(out[0].header.id == 9);
  CHECK(out[0].payload.size() == 3);
}

TEST_CASE("Batch: decoding with a count keeps the storage of a larger batch before") {
  std::vector<std::vector<zmq::message_t>> msgs;
  msgs.push_back(task_message(proto::MsgType::kSubmit, 7, {"seven"}));
  msgs.push_back(task_message(proto::MsgType::kResult, 8, {"eight", "more"}));
  msgs.push_back(task_message(proto::MsgType::kTask, 9, {"nine"}));
  std::vector<const std::vector<zmq::message_t>*> refs;
  for (const auto& m : msgs) refs.push_back(&m);
  proto::Message batch;
  auto wire = proto::pack_batch(refs);
  REQUIRE(proto::decode(wire, 0, &batch).ok());
  std::vector<proto::Message> out;
  std::size_t count = 99;
  REQUIRE(proto::decode_batch(batch, out, &count).ok());
  REQUIRE(count == 3);
  REQUIRE(out.size() == 3);
  CHECK(out[1].payload.size() == 2);
  const proto::Message* storage = out.data();
  const std::size_t kept = out[2].payload.capacity();

  auto wire2 = proto::pack_batch({refs[1]});
  REQUIRE(proto::decode(wire2, 0, &batch).ok());
  REQUIRE(proto::decode_batch(batch, out, &count).ok());
  CHECK(count == 1);
  CHECK(out.size() == 3);  // not shrunk
  CHECK(out.data() == storage);
  CHECK(out[2].payload.capacity() == kept);
  CHECK(out[0].header.id == 8);
  REQUIRE(out[0].payload.size() == 2);
  CHECK(out[0].payload[1].to_string() == "more");

  // All or nothing: a bad batch yields no record, and no record keeps frames.
  std::string body = body_of({{header_bytes(proto::MsgType::kSubmit, 1), "x"}}) + "extra";
  proto::Header h;
  h.type = proto::MsgType::kBatch;
  h.aux = 1;
  std::vector<zmq::message_t> payload;
  payload.emplace_back(body.data(), body.size());
  auto bad = proto::encode(h, std::move(payload));
  REQUIRE(proto::decode(bad, 0, &batch).ok());
  CHECK(proto::decode_batch(batch, out, &count).code == DecodeError::kBadBatch);
  CHECK(count == 0);
  CHECK(out.size() == 3);
  for (const auto& m : out) CHECK(m.payload.empty());
}

TEST_CASE("Batch: only small Submits, Tasks and Results are batchable") {
  CHECK(proto::batchable(proto::MsgType::kSubmit, task_message(proto::MsgType::kSubmit, 1, {"x"})));
  CHECK(proto::batchable(proto::MsgType::kResult, task_message(proto::MsgType::kResult, 1, {})));
  CHECK(proto::batchable(proto::MsgType::kTask,
                         task_message(proto::MsgType::kTask, 1, {std::string(proto::kBatchRecordBytes, 'x')})));
  CHECK_FALSE(proto::batchable(
      proto::MsgType::kTask, task_message(proto::MsgType::kTask, 1, {std::string(proto::kBatchRecordBytes, 'x'), "y"})));
  CHECK_FALSE(proto::batchable(proto::MsgType::kHeartbeat, task_message(proto::MsgType::kHeartbeat, 1, {})));
  CHECK_FALSE(proto::batchable(proto::MsgType::kOutput, task_message(proto::MsgType::kOutput, 1, {"", ""})));
  CHECK_FALSE(proto::batchable(proto::MsgType::kBatch, task_message(proto::MsgType::kBatch, 1, {""})));
}

TEST_CASE("Batch: batch_record_bytes is batch_bytes for a batchable message and 0 for any other") {
  struct Case {
    proto::MsgType type;
    std::vector<zmq::message_t> frames;
  };
  std::vector<Case> cases;
  cases.push_back({proto::MsgType::kSubmit, task_message(proto::MsgType::kSubmit, 1, {"x"})});
  cases.push_back({proto::MsgType::kResult, task_message(proto::MsgType::kResult, 2, {})});
  cases.push_back({proto::MsgType::kTask, task_message(proto::MsgType::kTask, 3, {"ab", "", "cde"})});
  cases.push_back(
      {proto::MsgType::kTask, task_message(proto::MsgType::kTask, 4, {std::string(proto::kBatchRecordBytes, 'x')})});
  cases.push_back({proto::MsgType::kTask,
                   task_message(proto::MsgType::kTask, 5, {std::string(proto::kBatchRecordBytes, 'x'), "y"})});
  cases.push_back({proto::MsgType::kHeartbeat, task_message(proto::MsgType::kHeartbeat, 6, {})});
  cases.push_back({proto::MsgType::kOutput, task_message(proto::MsgType::kOutput, 7, {"", ""})});
  std::vector<const std::vector<zmq::message_t>*> batchable;
  std::size_t body = 0;
  for (const Case& c : cases) {
    CAPTURE(proto::to_string(c.type));
    const std::size_t bytes = proto::batch_record_bytes(c.type, c.frames);
    if (proto::batchable(c.type, c.frames)) {
      CHECK(bytes == proto::batch_bytes(c.frames));
      batchable.push_back(&c.frames);
      body += bytes;
    } else {
      CHECK(bytes == 0);
    }
  }
  REQUIRE(batchable.size() == 4);
  // The shares add up to the body pack_batch writes.
  auto a = proto::pack_batch(batchable);
  REQUIRE(a.size() == 3);
  CHECK(a[2].size() == body);
}

TEST_CASE("Batch: records given as header bytes and payload frames make the same body as whole messages") {
  // A sender may write a Task's or a Result's header inline (encode_small_header) and
  // never make it a frame; the Batch must be the one the frames make.
  const std::vector<std::uint64_t> ids = {0, 1, 127, 128, 65536, 4294967296ULL,
                                          std::numeric_limits<std::uint64_t>::max()};
  const std::vector<std::int64_t> auxes = {0, -1, 300, std::numeric_limits<std::int64_t>::min()};
  std::vector<std::vector<zmq::message_t>> whole;
  std::vector<std::vector<zmq::message_t>> payloads;
  std::vector<std::vector<unsigned char>> headers;
  for (std::size_t k = 0; k < ids.size(); ++k) {
    proto::Header h;
    h.type = k % 2 == 0 ? proto::MsgType::kTask : proto::MsgType::kResult;
    h.id = ids[k];
    h.aux = auxes[k % auxes.size()];
    // A Result's timing at its widest: two 64-bit integers.
    if (h.type == proto::MsgType::kResult) h.targets = {std::numeric_limits<std::int64_t>::min(), -1};
    std::vector<std::string> chunks(k % 3, std::string(k, 'p'));
    std::vector<zmq::message_t> frames;
    for (const auto& c : chunks) frames.emplace_back(c.data(), c.size());
    whole.push_back(proto::encode(h, std::move(frames)));
    std::vector<unsigned char> buf(proto::kSmallHeaderBytes);
    const std::size_t n = proto::encode_small_header(h, buf.data());
    CAPTURE(h.id);
    REQUIRE(n != 0);
    buf.resize(n);
    CHECK(std::string(buf.begin(), buf.end()) == whole.back()[1].to_string());  // the header frame's bytes
    headers.push_back(std::move(buf));
    payloads.emplace_back();
    for (const auto& c : chunks) payloads.back().emplace_back(c.data(), c.size());
    CHECK(proto::batch_record_bytes(h.type, n, payloads.back().data(), payloads.back().size()) ==
          proto::batch_record_bytes(h.type, whole.back()));
  }
  std::vector<const std::vector<zmq::message_t>*> messages;
  std::vector<proto::BatchRecord> records;
  std::size_t body = 0;
  for (std::size_t k = 0; k < whole.size(); ++k) {
    messages.push_back(&whole[k]);
    records.push_back({headers[k].data(), headers[k].size(), payloads[k].data(), payloads[k].size()});
    body += proto::batch_bytes(whole[k]);
  }
  auto a = proto::pack_batch(messages);
  auto b = proto::pack_batch(records, body);
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(a[i].to_string() == b[i].to_string());

  // Only a header with at most two targets and no text or options is
  // written inline.
  unsigned char buf[proto::kSmallHeaderBytes];
  proto::Header h;
  h.type = proto::MsgType::kTask;
  h.targets = {1, 2, 3};
  CHECK(proto::encode_small_header(h, buf) == 0);
  h.targets.clear();
  h.text = "x";
  CHECK(proto::encode_small_header(h, buf) == 0);
  h.text.clear();
  h.opts.revision = 4;
  CHECK(proto::encode_small_header(h, buf) == 0);
}

TEST_CASE("BadBatch: no body, two bodies, a record count of 0, negative or over the limit") {
  proto::Header h;
  h.type = proto::MsgType::kBatch;
  h.aux = 1;
  auto no_body = proto::encode(h);
  proto::Message m;
  CHECK(proto::decode(no_body, 0, &m).code == DecodeError::kBadBatch);
  auto two = proto::encode(h, frames_of({"", ""}));
  CHECK(proto::decode(two, 0, &m).code == DecodeError::kBadBatch);
  std::vector<proto::Message> out;
  const std::string one = body_of({{header_bytes(proto::MsgType::kSubmit)}});
  CHECK(decode_body(1, one, out).ok());
  CHECK(decode_body(0, one, out).code == DecodeError::kBadBatch);
  CHECK(decode_body(-1, one, out).code == DecodeError::kBadBatch);
  proto::Limits limits;
  limits.max_batch_records = 2;
  const std::string three = body_of({{header_bytes(proto::MsgType::kSubmit)},
                                     {header_bytes(proto::MsgType::kSubmit)},
                                     {header_bytes(proto::MsgType::kSubmit)}});
  CHECK(decode_body(3, three, out).ok());
  CHECK(decode_body(3, three, out, limits).code == DecodeError::kBadBatch);
}

TEST_CASE("BadBatch: a count that does not match the records, truncation, trailing bytes") {
  std::vector<proto::Message> out;
  const std::string two = body_of({{header_bytes(proto::MsgType::kTask, 1), "p"},
                                   {header_bytes(proto::MsgType::kTask, 2), "q"}});
  REQUIRE(decode_body(2, two, out).ok());
  CHECK(decode_body(3, two, out).code == DecodeError::kBadBatch);  // one record short
  CHECK(out.empty());                                               // all or nothing
  CHECK(decode_body(1, two, out).code == DecodeError::kBadBatch);  // bytes left over
  for (std::size_t cut = 0; cut < two.size(); ++cut) {             // cut anywhere
    CAPTURE(cut);
    CHECK(decode_body(2, two.substr(0, cut), out).code == DecodeError::kBadBatch);
  }
  CHECK(decode_body(2, two + "x", out).code == DecodeError::kBadBatch);
}

TEST_CASE("BadBatch: huge announced lengths fail before anything is allocated") {
  std::vector<proto::Message> out;
  // Frame count 2^32-1, then a frame length of 2^32-1 with nothing behind it.
  CHECK(decode_body(1, std::string("\xff\xff\xff\xff", 4), out).code == DecodeError::kBadBatch);
  CHECK(decode_body(1, std::string("\x00\x00\x00\x01\xff\xff\xff\xff", 8), out).code == DecodeError::kBadBatch);
  CHECK(decode_body(4096, std::string(), out).code == DecodeError::kBadBatch);
  proto::Limits limits;
  limits.max_frames = 3;  // signature + header + 1 payload frame
  const std::string ok = body_of({{header_bytes(proto::MsgType::kTask), "a"}});
  const std::string over = body_of({{header_bytes(proto::MsgType::kTask), "a", "b"}});
  CHECK(decode_body(1, ok, out, limits).ok());
  CHECK(decode_body(1, over, out, limits).code == DecodeError::kBadBatch);
  CHECK(decode_body(1, body_of({{}}), out).code == DecodeError::kBadBatch);  // a record without a header
}

TEST_CASE("BadBatch: a record that is not a Submit, Task or Result, or whose header is malformed") {
  std::vector<proto::Message> out;
  for (auto t : {proto::MsgType::kHeartbeat, proto::MsgType::kRegister, proto::MsgType::kBatch,
                 proto::MsgType::kShutdown, proto::MsgType::kOutput, proto::MsgType::kAck}) {
    CAPTURE(static_cast<int>(t));
    const std::string body = body_of({{header_bytes(proto::MsgType::kSubmit)}, {header_bytes(t), "", ""}});
    const proto::Status st = decode_body(2, body, out);
    CHECK(st.code == DecodeError::kBadBatch);
    CHECK(st.detail.find("record 1") != std::string::npos);
  }
  CHECK(decode_body(1, body_of({{"\xdd\xff\xff\xff\xff"}}), out).code == DecodeError::kBadBatch);
  CHECK(decode_body(1, body_of({{std::string("\x96\x00", 2)}}), out).code == DecodeError::kBadBatch);
  proto::Limits limits;
  limits.max_header_bytes = 8;
  CHECK(decode_body(1, body_of({{header_bytes(proto::MsgType::kSubmit, 1ull << 40)}}), out, limits).code ==
        DecodeError::kBadBatch);
}
