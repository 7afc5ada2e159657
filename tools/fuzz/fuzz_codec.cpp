// libFuzzer target: the message codec.  The input is split into frames
// (fuzz_input.hpp) and decoded; whatever decodes must encode and decode
// back to the same header, and nothing may crash, leak or overflow.
//
//   input := flags:u8, frames block
//   flags bit 0: put a valid signature frame first
//         bit 1: tight decoder limits (8 frames, 256-byte header, ...)
//         bit 2: decode after a one-frame routing envelope
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "fuzz_input.hpp"
#include "protocol.hpp"

using namespace zfarm;

namespace {

void require(bool ok, const char* what) {
  if (!ok) {
    __builtin_printf("invariant broken: %s\n", what);
    std::abort();
  }
}

bool same_header(const proto::Header& a, const proto::Header& b) {
  return a.type == b.type && a.id == b.id && a.targets == b.targets && a.status == b.status && a.aux == b.aux &&
         a.text == b.text && a.opts.retries == b.opts.retries && a.opts.timeout_ms == b.opts.timeout_ms &&
         a.opts.priority == b.opts.priority && a.opts.after == b.opts.after && a.opts.follow == b.opts.follow &&
         a.opts.engines == b.opts.engines && a.opts.ids == b.opts.ids && a.opts.session == b.opts.session &&
         a.opts.revision == b.opts.revision;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const std::uint8_t flags = in.u8();
  proto::Limits limits;
  if (flags & 2) {
    limits.max_frames = 8;
    limits.max_header_bytes = 256;
    limits.max_targets = 4;
    limits.max_text_bytes = 16;
    limits.max_ids = 4;
  }
  std::vector<zmq::message_t> frames;
  const std::size_t first = (flags & 4) ? 1 : 0;
  if (first == 1) frames.emplace_back("peer", 4);
  in.frames(&frames, (flags & 1) != 0);
  const std::size_t n_frames = frames.size();

  proto::Message msg;
  const proto::Status st = proto::decode(frames, first, &msg, limits);
  if (!st.ok()) {
    require(!st.detail.empty(), "an error without a detail");
    require(proto::to_string(st.code) != nullptr, "an error without a name");
    return 0;
  }
  require(n_frames >= first + 2, "decoded without signature and header");
  require(msg.payload.size() == n_frames - first - 2, "payload frames lost or invented");
  require(static_cast<std::uint8_t>(msg.header.type) >= 1 &&
              static_cast<std::uint8_t>(msg.header.type) <= proto::kMaxMsgType,
          "an unknown type decoded");
  require(msg.header.targets.size() <= limits.max_targets, "targets over the limit");
  require(msg.header.text.size() <= limits.max_text_bytes, "text over the limit");

  if (msg.header.type == proto::MsgType::kBatch) {
    // A Batch's records: each must be a well-formed Submit, Task or Result
    // within the limits, and packing them again must give the same records.
    std::vector<proto::Message> records;
    const proto::Status sb = proto::decode_batch(msg, records, limits);
    if (!sb.ok()) {
      require(!sb.detail.empty() && records.empty(), "a failed batch without a detail, or half decoded");
    } else {
      require(records.size() == static_cast<std::size_t>(msg.header.aux), "batch records lost or invented");
      std::vector<std::vector<zmq::message_t>> encoded;
      encoded.reserve(records.size());
      std::vector<const std::vector<zmq::message_t>*> refs;
      for (auto& r : records) {
        require(r.header.type == proto::MsgType::kSubmit || r.header.type == proto::MsgType::kTask ||
                    r.header.type == proto::MsgType::kResult,
                "a batch record of a type that cannot be batched");
        require(r.payload.size() + 2 <= limits.max_frames, "a batch record over the frame limit");
        std::vector<zmq::message_t> payload;
        for (auto& f : r.payload) payload.emplace_back(f.data(), f.size());
        encoded.push_back(proto::encode(r.header, std::move(payload)));
      }
      for (auto& e : encoded) refs.push_back(&e);
      auto wire = proto::pack_batch(refs);
      // The same records given as parts, as the broker packs them (a small
      // header written inline where it can be, else the header frame's
      // bytes): the same body, byte for byte.
      std::vector<std::array<unsigned char, proto::kSmallHeaderBytes>> small(records.size());
      std::vector<proto::BatchRecord> parts;
      std::size_t body_size = 0;
      for (std::size_t i = 0; i < records.size(); ++i) {
        const auto& e = encoded[i];
        const std::size_t n = proto::encode_small_header(records[i].header, small[i].data());
        if (n != 0) {
          require(n == e[1].size() && std::memcmp(small[i].data(), e[1].data(), n) == 0,
                  "an inline header differs from the header frame");
          parts.push_back({small[i].data(), n, e.data() + 2, e.size() - 2});
        } else {
          parts.push_back({e[1].data(), e[1].size(), e.data() + 2, e.size() - 2});
        }
        body_size += proto::batch_bytes(e);
      }
      const auto from_parts = proto::pack_batch(parts, body_size);
      require(from_parts.size() == wire.size() && from_parts.back().size() == wire.back().size() &&
                  std::memcmp(from_parts.back().data(), wire.back().data(), wire.back().size()) == 0,
              "a Batch packed from parts differs from one packed from whole messages");
      proto::Message again;
      std::vector<proto::Message> back;
      require(proto::decode(wire, 0, &again, limits).ok() && proto::decode_batch(again, back, limits).ok(),
              "re-packed batch records did not decode");
      require(back.size() == records.size(), "the batch round trip changed the record count");
      for (std::size_t i = 0; i < back.size(); ++i) {
        require(same_header(back[i].header, records[i].header), "the batch round trip changed a header");
        require(back[i].payload.size() == records[i].payload.size(), "the batch round trip changed a payload");
      }
    }
  }

  // Round trip: what decoded re-encodes (minimally) and decodes the same.
  const std::size_t payload_size = msg.payload.size();
  std::vector<zmq::message_t> again = proto::encode(msg.header, std::move(msg.payload));
  proto::Message back;
  const proto::Status st2 = proto::decode(again, 0, &back, limits);
  require(st2.ok(), "a decoded header did not decode after encoding");
  require(same_header(msg.header, back.header), "the round trip changed the header");
  require(back.payload.size() == payload_size, "the round trip changed the payload");
  return 0;
}
