#include "protocol.hpp"

#include <cstring>
#include <algorithm>
#include <bit>
#include <limits>
#include <string_view>

#include <msgpack.hpp>

namespace zfarm::proto {

const char* to_string(DecodeError e) {
  switch (e) {
    case DecodeError::kNone: return "ok";
    case DecodeError::kTooFewFrames: return "too few frames";
    case DecodeError::kTooManyFrames: return "too many frames";
    case DecodeError::kBadSignature: return "bad signature";
    case DecodeError::kWrongVersion: return "wrong protocol version";
    case DecodeError::kHeaderTooLarge: return "header too large";
    case DecodeError::kBadMsgpack: return "bad msgpack";
    case DecodeError::kBadHeaderShape: return "bad header shape";
    case DecodeError::kUnknownType: return "unknown message type";
    case DecodeError::kBadOutput: return "bad output message";
    case DecodeError::kBadBatch: return "bad batch message";
  }
  return "unknown error";
}

const char* to_string(MsgType t) {
  switch (t) {
    case MsgType::kRegister: return "register";
    case MsgType::kRegisterReply: return "register_reply";
    case MsgType::kHeartbeat: return "heartbeat";
    case MsgType::kSubmit: return "submit";
    case MsgType::kTask: return "task";
    case MsgType::kResult: return "result";
    case MsgType::kStatus: return "status";
    case MsgType::kStatusReply: return "status_reply";
    case MsgType::kShutdown: return "shutdown";
    case MsgType::kError: return "error";
    case MsgType::kHello: return "hello";
    case MsgType::kAbort: return "abort";
    case MsgType::kInterrupt: return "interrupt";
    case MsgType::kAck: return "ack";
    case MsgType::kFetch: return "fetch";
    case MsgType::kEvent: return "event";
    case MsgType::kWelcome: return "welcome";
    case MsgType::kOutput: return "output";
    case MsgType::kCredit: return "credit";
    case MsgType::kBatch: return "batch";
  }
  return "unknown";
}

const char* to_string(ResultStatus s) {
  switch (s) {
    case ResultStatus::kOk: return "ok";
    case ResultStatus::kRemoteError: return "remote error";
    case ResultStatus::kEngineDied: return "engine died";
    case ResultStatus::kAborted: return "aborted";
    case ResultStatus::kRejected: return "rejected";
    case ResultStatus::kTimedOut: return "timed out";
    case ResultStatus::kLost: return "lost";
    case ResultStatus::kImpossible: return "impossible";
  }
  return "unknown";
}

namespace {

Status fail(DecodeError code, std::string detail) { return Status{code, std::move(detail)}; }

bool as_u64(const msgpack::object& o, std::uint64_t* v) {
  if (o.type != msgpack::type::POSITIVE_INTEGER) return false;
  *v = o.via.u64;
  return true;
}

bool as_i64(const msgpack::object& o, std::int64_t* v) {
  if (o.type == msgpack::type::NEGATIVE_INTEGER) {
    *v = o.via.i64;
    return true;
  }
  if (o.type == msgpack::type::POSITIVE_INTEGER &&
      o.via.u64 <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    *v = static_cast<std::int64_t>(o.via.u64);
    return true;
  }
  return false;
}

template <typename Packer, typename T>
void pack_list(Packer& pk, const char* key, const std::vector<T>& v) {
  if (v.empty()) return;
  pk.pack(key);
  pk.pack_array(static_cast<std::uint32_t>(v.size()));
  for (T x : v) pk.pack(x);
}

template <typename Packer>
void pack_options(Packer& pk, const Options& o) {
  std::uint32_t n = 0;
  n += o.retries != 0;
  n += o.timeout_ms != 0;
  n += o.priority != 0;
  n += !o.after.empty();
  n += !o.follow.empty();
  n += !o.engines.empty();
  n += !o.ids.empty();
  n += !o.session.empty();
  n += o.revision != 0;
  pk.pack_map(n);
  if (o.retries != 0) pk.pack("retries"), pk.pack_int64(o.retries);
  if (o.timeout_ms != 0) pk.pack("timeout_ms"), pk.pack_int64(o.timeout_ms);
  if (o.priority != 0) pk.pack("priority"), pk.pack_int64(o.priority);
  pack_list(pk, "after", o.after);
  pack_list(pk, "follow", o.follow);
  pack_list(pk, "engines", o.engines);
  pack_list(pk, "ids", o.ids);
  if (!o.session.empty()) pk.pack("session"), pk.pack(o.session);
  if (o.revision != 0) pk.pack("revision"), pk.pack_int64(o.revision);
}

bool key_is(const msgpack::object& k, std::string_view name) {
  return k.type == msgpack::type::STR && std::string_view(k.via.str.ptr, k.via.str.size) == name;
}

template <typename T, typename Conv>
bool read_list(const msgpack::object& v, std::vector<T>* out, Conv conv) {
  if (v.type != msgpack::type::ARRAY) return false;
  out->clear();
  out->reserve(v.via.array.size);
  for (std::uint32_t i = 0; i < v.via.array.size; ++i) {
    T x{};
    if (!conv(v.via.array.ptr[i], &x)) return false;
    out->push_back(x);
  }
  return true;
}

Status decode_options(const msgpack::object& o, Options* out, const Limits& limits) {
  *out = Options{};
  if (o.type != msgpack::type::MAP) return fail(DecodeError::kBadHeaderShape, "options must be a map");
  for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
    const msgpack::object& k = o.via.map.ptr[i].key;
    const msgpack::object& v = o.via.map.ptr[i].val;
    auto bad = [&](const char* what) {
      return fail(DecodeError::kBadHeaderShape, std::string("option ") + what);
    };
    auto list_ok = [&](const msgpack::object& val) {
      return val.type == msgpack::type::ARRAY && val.via.array.size <= limits.max_ids;
    };
    if (key_is(k, "retries")) {
      if (!as_i64(v, &out->retries)) return bad("retries must be an integer");
    } else if (key_is(k, "timeout_ms")) {
      if (!as_i64(v, &out->timeout_ms)) return bad("timeout_ms must be an integer");
    } else if (key_is(k, "priority")) {
      if (!as_i64(v, &out->priority)) return bad("priority must be an integer");
    } else if (key_is(k, "after")) {
      if (!list_ok(v) || !read_list(v, &out->after, as_u64)) return bad("after must be a list of task ids");
    } else if (key_is(k, "follow")) {
      if (!list_ok(v) || !read_list(v, &out->follow, as_u64)) return bad("follow must be a list of task ids");
    } else if (key_is(k, "engines")) {
      if (!list_ok(v) || !read_list(v, &out->engines, as_i64)) return bad("engines must be a list of engine ids");
    } else if (key_is(k, "ids")) {
      if (!list_ok(v) || !read_list(v, &out->ids, as_u64)) return bad("ids must be a list of task ids");
    } else if (key_is(k, "session")) {
      if (v.type != msgpack::type::STR) return bad("session must be a string");
      out->session.assign(v.via.str.ptr, v.via.str.size);
    } else if (key_is(k, "revision")) {
      if (!as_i64(v, &out->revision)) return bad("revision must be an integer");
    }
    // Any other key: ignored (a newer peer's option).
  }
  return Status{};
}

// The common header, read without building msgpack objects: a 6-item array
// (no options) of plain integers, a short list of targets and a string, with
// nothing after it.  decode_header() tries this first; anything else (options,
// an unusual encoding, any error) returns false, and the general decoder
// below reads the header again and makes the error message.  So this path
// accepts only headers the general one accepts, with the same result.
class FastReader {
 public:
  FastReader(const unsigned char* p, std::size_t n) : p_(p), end_(p + n) {}

  bool done() const { return p_ == end_; }

  bool byte(unsigned char* b) {
    if (p_ == end_) return false;
    *b = *p_++;
    return true;
  }

  // Any msgpack integer: a non-negative one in *u (neg = false), a negative one in *i.
  // Inlined: a header has five or more, and the call was a third of the cost.
  [[gnu::always_inline]] bool integer(bool* neg, std::uint64_t* u, std::int64_t* i) {
    unsigned char b;
    if (!byte(&b)) return false;
    *neg = false;
    if (b <= 0x7f) return *u = b, true;
    if (b >= 0xe0) return *neg = true, *i = static_cast<std::int8_t>(b), true;
    std::size_t n = 0;
    bool is_signed = false;
    switch (b) {
      case 0xcc: n = 1; break;
      case 0xcd: n = 2; break;
      case 0xce: n = 4; break;
      case 0xcf: n = 8; break;
      case 0xd0: n = 1, is_signed = true; break;
      case 0xd1: n = 2, is_signed = true; break;
      case 0xd2: n = 4, is_signed = true; break;
      case 0xd3: n = 8, is_signed = true; break;
      default: return false;
    }
    std::uint64_t v = 0;
    if (!big_endian(n, &v)) return false;
    if (!is_signed) return *u = v, true;
    const int shift = static_cast<int>(64 - 8 * n);  // sign-extend from n bytes
    const auto s = static_cast<std::int64_t>(v << shift) >> shift;
    if (s >= 0) return *u = static_cast<std::uint64_t>(s), true;
    return *neg = true, *i = s, true;
  }

  bool unsigned_int(std::uint64_t* v) {
    bool neg;
    std::int64_t i;
    return integer(&neg, v, &i) && !neg;
  }

  bool signed_int(std::int64_t* v) {
    bool neg;
    std::uint64_t u;
    if (!integer(&neg, &u, v)) return false;
    if (neg) return true;
    if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return false;
    *v = static_cast<std::int64_t>(u);
    return true;
  }

  bool str(std::size_t max, const char** data, std::size_t* size) {
    unsigned char b;
    if (!byte(&b)) return false;
    std::uint64_t n = 0;
    if (b >= 0xa0 && b <= 0xbf) {
      n = b & 0x1f;
    } else if (b == 0xd9 || b == 0xda || b == 0xdb) {
      if (!big_endian(std::size_t{1} << (b - 0xd9), &n)) return false;
    } else {
      return false;
    }
    if (n > max || n > static_cast<std::uint64_t>(end_ - p_)) return false;
    *data = reinterpret_cast<const char*>(p_);
    *size = static_cast<std::size_t>(n);
    p_ += n;
    return true;
  }

 private:
  // An n-byte big-endian unsigned integer.  The common widths with one
  // load and a byte swap: a Result's timing and a client's task ids are
  // 8-byte integers, read for every task by broker, engine and client.
  bool big_endian(std::size_t n, std::uint64_t* v) {
    if (static_cast<std::size_t>(end_ - p_) < n) return false;
    std::uint64_t x = 0;
    if constexpr (std::endian::native == std::endian::little) {
      switch (n) {
        case 2: {
          std::uint16_t t;
          std::memcpy(&t, p_, 2);
          x = __builtin_bswap16(t);
          break;
        }
        case 4: {
          std::uint32_t t;
          std::memcpy(&t, p_, 4);
          x = __builtin_bswap32(t);
          break;
        }
        case 8:
          std::memcpy(&x, p_, 8);
          x = __builtin_bswap64(x);
          break;
        default:
          for (std::size_t k = 0; k < n; ++k) x = (x << 8) | p_[k];
      }
    } else {
      for (std::size_t k = 0; k < n; ++k) x = (x << 8) | p_[k];
    }
    p_ += n;
    *v = x;
    return true;
  }

  const unsigned char* p_;
  const unsigned char* end_;
};

bool decode_plain_header(const void* data, std::size_t size, Header* out, const Limits& limits) {
  FastReader r(static_cast<const unsigned char*>(data), size);
  unsigned char b;
  std::uint64_t type = 0, id = 0, status = 0;
  if (!r.byte(&b) || b != 0x96) return false;  // fixarray of 6: no options
  if (!r.unsigned_int(&type) || type == 0 || type > kMaxMsgType) return false;
  if (!r.unsigned_int(&id)) return false;
  if (!r.byte(&b) || (b & 0xf0) != 0x90) return false;  // fixarray: at most 15 targets
  const std::size_t n = b & 0x0f;
  if (n > limits.max_targets) return false;
  std::int64_t targets[15];
  for (std::size_t k = 0; k < n; ++k) {
    if (!r.signed_int(&targets[k])) return false;
  }
  std::int64_t aux = 0;
  if (!r.unsigned_int(&status) || status > std::numeric_limits<std::uint32_t>::max()) return false;
  if (!r.signed_int(&aux)) return false;
  const char* text = nullptr;
  std::size_t text_size = 0;
  if (!r.str(limits.max_text_bytes, &text, &text_size) || !r.done()) return false;
  out->type = static_cast<MsgType>(type);
  out->id = id;
  out->targets.resize(n);
  for (std::size_t k = 0; k < n; ++k) out->targets[k] = targets[k];
  out->status = static_cast<std::uint32_t>(status);
  out->aux = aux;
  if (text_size == 0) {
    out->text.clear();  // most headers: no call into the string's replace
  } else {
    out->text.assign(text, text_size);
  }
  if (!out->opts.empty()) out->opts = Options{};
  return true;
}

}  // namespace

namespace {

// A buffer for msgpack-c's packer over a fixed array: its write() is
// inline, so each item the packer writes is a store, not a call.
struct FixedBuffer {
  unsigned char* p;
  void write(const char* data, std::size_t n) {
    std::memcpy(p, data, n);
    p += n;
  }
};

// A header's array mark and its six fixed items (the options, if any, go
// after them as the seventh).
template <typename Packer>
void pack_header_items(Packer& pk, const Header& h, bool with_opts) {
  pk.pack_array(with_opts ? 7 : 6);
  pk.pack_uint8(static_cast<std::uint8_t>(h.type));
  pk.pack_uint64(h.id);
  pk.pack_array(static_cast<std::uint32_t>(h.targets.size()));
  for (std::int64_t t : h.targets) pk.pack_int64(t);
  pk.pack_uint32(h.status);
  pk.pack_int64(h.aux);
  pk.pack_str(static_cast<std::uint32_t>(h.text.size()));
  pk.pack_str_body(h.text.data(), static_cast<std::uint32_t>(h.text.size()));
}

// The largest header written into a FixedBuffer: the six items at their
// longest (array mark, type, id, status and aux at 9 bytes, the targets'
// mark at 5) plus 9 bytes per target and the text.  Headers with options,
// or longer than this, go into an sbuffer.
constexpr std::size_t kPlainHeaderBytes = 512;
constexpr std::size_t kPlainFixedBytes = 1 + 9 + 9 + 5 + 9 + 9 + 5;

// Writes `h`, which has no options, into `buf`, which has room for it
// (kPlainFixedBytes + 9 per target + the text); returns the bytes written.
inline std::size_t write_plain_header(const Header& h, unsigned char* buf) {
  FixedBuffer fb{buf};
  msgpack::packer<FixedBuffer> pk(fb);
  pack_header_items(pk, h, false);
  return static_cast<std::size_t>(fb.p - buf);
}

// The signature and header frames of `h`.
void encode_header_frames(const Header& h, zmq::message_t* sig_frame, zmq::message_t* header_frame) {
  write_signature(*sig_frame);

  const bool with_opts = !h.opts.empty();
  if (!with_opts && kPlainFixedBytes + 9 * h.targets.size() + h.text.size() <= kPlainHeaderBytes) {
    // The common header (every Task and Result): written here, in one go.
    unsigned char buf[kPlainHeaderBytes];
    header_frame->rebuild(buf, write_plain_header(h, buf));
    return;
  }

  // One buffer per thread, emptied and reused: a fresh sbuffer allocates
  // 8 KiB for every header (the frame below copies the bytes out).  It
  // keeps its largest size, at most Limits::max_header_bytes in practice.
  thread_local msgpack::sbuffer buf;
  buf.clear();
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pack_header_items(pk, h, with_opts);
  if (with_opts) pack_options(pk, h.opts);
  header_frame->rebuild(buf.data(), buf.size());
}

}  // namespace

void write_signature(zmq::message_t& f) {
  char sig[kSignatureSize];
  std::memcpy(sig, kMagic, 4);
  sig[4] = static_cast<char>(kVersion);
  f.rebuild(sig, kSignatureSize);
}

std::size_t encode_small_header(const Header& h, unsigned char* out) {
  if (!h.opts.empty() || h.targets.size() > 2 || !h.text.empty()) return 0;
  return write_plain_header(h, out);
}

void encode_header(const Header& h, std::vector<zmq::message_t>& out) {
  out.emplace_back();
  out.emplace_back();
  encode_header_frames(h, &out[out.size() - 2], &out[out.size() - 1]);
}

std::vector<zmq::message_t> encode(const Header& h, std::vector<zmq::message_t> payload) {
  if (payload.capacity() >= payload.size() + 2) {
    // Room in the payload's own storage (decode leaves it in a Result's):
    // the two frames go in front, no new vector.
    const std::size_t n = payload.size();
    payload.emplace_back();
    payload.emplace_back();
    std::move_backward(payload.begin(), payload.begin() + static_cast<std::ptrdiff_t>(n), payload.end());
    encode_header_frames(h, &payload[0], &payload[1]);
    return payload;
  }
  std::vector<zmq::message_t> out;
  out.reserve(2 + payload.size());
  encode_header(h, out);
  for (auto& f : payload) out.push_back(std::move(f));
  return out;
}

Status decode_header(const void* data, std::size_t size, Header* out, const Limits& limits) {
  if (size > limits.max_header_bytes) {
    return fail(DecodeError::kHeaderTooLarge,
                "header of " + std::to_string(size) + " bytes exceeds limit of " +
                    std::to_string(limits.max_header_bytes));
  }
  if (decode_plain_header(data, size, out, limits)) return Status{};
  // Explicit limits: without them a few bytes may announce a huge array and
  // make the unpacker allocate for it before noticing the input is short.
  const msgpack::unpack_limit ulimit(/*array=*/std::max(limits.max_targets, limits.max_ids), /*map=*/64,
                                     /*str=*/limits.max_text_bytes, /*bin=*/0, /*ext=*/0,
                                     /*depth=*/3);
  // One zone per thread, cleared after each header: clear() keeps its first
  // chunk, so decoding an ordinary header allocates nothing.
  thread_local msgpack::zone zone;
  struct ClearZone {
    ~ClearZone() { zone.clear(); }
  } clear_zone;
  msgpack::object o;
  try {
    std::size_t off = 0;
    o = msgpack::unpack(zone, static_cast<const char*>(data), size, off, nullptr, nullptr, ulimit);
    if (off != size) return fail(DecodeError::kBadMsgpack, "trailing bytes after header");
  } catch (const std::exception& e) {
    return fail(DecodeError::kBadMsgpack, std::string("header is not valid msgpack: ") + e.what());
  }
  if (o.type != msgpack::type::ARRAY || o.via.array.size < 6 || o.via.array.size > 7) {
    return fail(DecodeError::kBadHeaderShape, "header must be an array of 6 or 7 items");
  }
  const msgpack::object* f = o.via.array.ptr;
  std::uint64_t type = 0, status = 0;
  if (!as_u64(f[0], &type)) return fail(DecodeError::kBadHeaderShape, "type must be an integer");
  if (type == 0 || type > kMaxMsgType) {
    return fail(DecodeError::kUnknownType, "unknown message type " + std::to_string(type));
  }
  if (!as_u64(f[1], &out->id)) return fail(DecodeError::kBadHeaderShape, "id must be an unsigned integer");
  if (f[2].type != msgpack::type::ARRAY || f[2].via.array.size > limits.max_targets) {
    return fail(DecodeError::kBadHeaderShape, "targets must be an array of at most " +
                                                  std::to_string(limits.max_targets) + " items");
  }
  out->targets.clear();
  out->targets.reserve(f[2].via.array.size);
  for (std::uint32_t i = 0; i < f[2].via.array.size; ++i) {
    std::int64_t t = 0;
    if (!as_i64(f[2].via.array.ptr[i], &t)) {
      return fail(DecodeError::kBadHeaderShape, "targets must hold integers");
    }
    out->targets.push_back(t);
  }
  if (!as_u64(f[3], &status) || status > std::numeric_limits<std::uint32_t>::max()) {
    return fail(DecodeError::kBadHeaderShape, "status must be a 32-bit unsigned integer");
  }
  if (!as_i64(f[4], &out->aux)) return fail(DecodeError::kBadHeaderShape, "aux must be an integer");
  if (f[5].type != msgpack::type::STR) return fail(DecodeError::kBadHeaderShape, "text must be a string");
  if (o.via.array.size == 7) {
    Status st = decode_options(f[6], &out->opts, limits);
    if (!st.ok()) return st;
  } else {
    out->opts = Options{};
  }
  out->type = static_cast<MsgType>(type);
  out->status = static_cast<std::uint32_t>(status);
  out->text.assign(f[5].via.str.ptr, f[5].via.str.size);
  return Status{};
}

Status check_signature(const zmq::message_t& sig) {
  if (sig.size() != kSignatureSize || std::memcmp(sig.data(), kMagic, 4) != 0) {
    return fail(DecodeError::kBadSignature, "first frame is not a zfarm signature");
  }
  const auto version = static_cast<const std::uint8_t*>(sig.data())[4];
  if (version != kVersion) {
    return fail(DecodeError::kWrongVersion, "peer speaks protocol version " + std::to_string(version) +
                                                ", this side speaks " + std::to_string(kVersion));
  }
  return Status{};
}

namespace {

// The shape of a Batch (revision 4): one payload frame, 1 to
// max_batch_records records.  decode() applies it to every Batch, and
// decode_batch() again to the Message it is given.
Status check_batch(const Message& m, const Limits& limits) {
  if (m.payload.size() != 1) {
    return fail(DecodeError::kBadBatch,
                "batch needs 1 payload frame (the records), not " + std::to_string(m.payload.size()));
  }
  if (m.header.aux < 1 || static_cast<std::uint64_t>(m.header.aux) > limits.max_batch_records) {
    return fail(DecodeError::kBadBatch, "batch of " + std::to_string(m.header.aux) + " records; 1 to " +
                                            std::to_string(limits.max_batch_records) + " allowed");
  }
  return Status{};
}

}  // namespace

Status decode(std::vector<zmq::message_t>& frames, std::size_t first, Message* out,
              const Limits& limits) {
  if (frames.size() < first + 2) {
    return fail(DecodeError::kTooFewFrames, "a message needs a signature and a header frame");
  }
  if (frames.size() - first > limits.max_frames) {
    return fail(DecodeError::kTooManyFrames,
                std::to_string(frames.size() - first) + " frames exceed the limit of " +
                    std::to_string(limits.max_frames));
  }
  Status st = check_signature(frames[first]);
  if (!st.ok()) return st;
  const zmq::message_t& hdr = frames[first + 1];
  st = decode_header(hdr.data(), hdr.size(), &out->header, limits);
  if (!st.ok()) return st;
  out->payload.clear();
  // A Result's payload is forwarded at once by the broker: room for the
  // signature and header that encode() then puts in front, so that needs no
  // new vector.  Other payloads (a Submit's may wait in a queue for long)
  // get no spare room.
  const std::size_t room = out->header.type == MsgType::kResult ? 2 : 0;
  out->payload.reserve(frames.size() - first - 2 + room);
  for (std::size_t i = first + 2; i < frames.size(); ++i) out->payload.push_back(std::move(frames[i]));
  if (out->header.type == MsgType::kOutput) return check_output(out->header, out->payload);
  if (out->header.type == MsgType::kBatch) return check_batch(*out, limits);
  return Status{};
}

// ---- Batch (revision 4) ----------------------------------------------------

namespace {

bool batched_type(MsgType t) {
  return t == MsgType::kSubmit || t == MsgType::kTask || t == MsgType::kResult;
}

void put_u32(unsigned char*& p, std::size_t v) {
  const auto x = static_cast<std::uint32_t>(v);
  p[0] = static_cast<unsigned char>(x >> 24);
  p[1] = static_cast<unsigned char>(x >> 16);
  p[2] = static_cast<unsigned char>(x >> 8);
  p[3] = static_cast<unsigned char>(x);
  p += 4;
}

bool get_u32(const unsigned char*& p, const unsigned char* end, std::size_t* v) {
  if (end - p < 4) return false;
  *v = (std::size_t{p[0]} << 24) | (std::size_t{p[1]} << 16) | (std::size_t{p[2]} << 8) | std::size_t{p[3]};
  p += 4;
  return true;
}

}  // namespace

bool batchable(MsgType type, const std::vector<zmq::message_t>& frames) {
  if (!batched_type(type) || frames.size() < 2) return false;
  std::size_t bytes = 0;
  for (std::size_t i = 2; i < frames.size(); ++i) {
    bytes += frames[i].size();
    if (bytes > kBatchRecordBytes) return false;
  }
  return true;
}

std::size_t batch_bytes(const std::vector<zmq::message_t>& frames) {
  std::size_t n = 4;  // frame count
  for (std::size_t i = 1; i < frames.size(); ++i) n += 4 + frames[i].size();
  return n;
}

std::size_t batch_record_bytes(MsgType type, std::size_t header_bytes, const zmq::message_t* payload,
                               std::size_t payload_frames) {
  if (!batched_type(type)) return 0;
  std::size_t bytes = 0;
  std::size_t n = 4 + 4 + header_bytes;  // frame count, header
  for (std::size_t i = 0; i < payload_frames; ++i) {
    const std::size_t size = payload[i].size();
    bytes += size;
    if (bytes > kBatchRecordBytes) return 0;
    n += 4 + size;
  }
  return n;
}

std::size_t batch_record_bytes(MsgType type, const std::vector<zmq::message_t>& frames) {
  if (frames.size() < 2) return 0;
  return batch_record_bytes(type, frames[1].size(), frames.data() + 2, frames.size() - 2);
}

std::vector<zmq::message_t> pack_batch(const std::vector<const std::vector<zmq::message_t>*>& messages) {
  // Kept from call to call: its storage is not allocated per Batch.
  thread_local std::vector<BatchRecord> records;
  records.clear();
  std::size_t body_size = 0;
  for (const auto* m : messages) {
    body_size += batch_bytes(*m);
    const zmq::message_t& header = (*m)[1];
    records.push_back({header.data(), header.size(), m->data() + 2, m->size() - 2});
  }
  return pack_batch(records, body_size);
}

std::vector<zmq::message_t> pack_batch(const std::vector<BatchRecord>& records, std::size_t body_size) {
  zmq::message_t body(body_size);
  auto* p = static_cast<unsigned char*>(body.data());
  for (const BatchRecord& r : records) {
    put_u32(p, 1 + r.payload_frames);  // header and payload: no signature
    put_u32(p, r.header_size);
    if (r.header_size != 0) std::memcpy(p, r.header, r.header_size);
    p += r.header_size;
    for (std::size_t i = 0; i < r.payload_frames; ++i) {
      // The size is a call into libzmq: read it once.
      const zmq::message_t& f = r.payload[i];
      const std::size_t size = f.size();
      put_u32(p, size);
      if (size != 0) std::memcpy(p, f.data(), size);
      p += size;
    }
  }
  Header h;
  h.type = MsgType::kBatch;
  h.aux = static_cast<std::int64_t>(records.size());
  std::vector<zmq::message_t> out;
  out.reserve(3);
  encode_header(h, out);
  out.push_back(std::move(body));
  return out;
}

Status decode_batch(const Message& batch, std::vector<Message>& out, const Limits& limits) {
  std::size_t count = 0;
  Status st = decode_batch(batch, out, &count, limits);
  out.resize(count);
  return st;
}

Status decode_batch(const Message& batch, std::vector<Message>& out, std::size_t* count, const Limits& limits) {
  *count = 0;
  std::size_t r = 0;
  auto bad = [&](std::string detail) {
    // Nothing of a bad batch is kept: its frames are let go (the Message
    // storage stays).
    for (Message& m : out) m.payload.clear();
    return fail(DecodeError::kBadBatch, std::move(detail));
  };
  if (batch.header.type != MsgType::kBatch) return bad("not a batch");
  if (Status shape = check_batch(batch, limits); !shape.ok()) return bad(std::move(shape.detail));
  const auto n = static_cast<std::size_t>(batch.header.aux);
  const auto* p = static_cast<const unsigned char*>(batch.payload[0].data());
  const auto* const end = p + batch.payload[0].size();
  auto bad_record = [&](const std::string& detail) { return bad("batch record " + std::to_string(r) + ": " + detail); };
  // Never shrunk: a smaller batch after a larger one keeps the headers and
  // payload vectors of the records it does not use, for the next.
  if (out.size() < n) out.resize(n);
  for (; r < n; ++r) {
    std::size_t frames = 0, len = 0;
    if (!get_u32(p, end, &frames)) return bad_record("truncated");
    // A record is a message without its signature: the same frame limit.
    if (frames < 1 || frames + 1 > limits.max_frames) {
      return bad_record(std::to_string(frames) + " frames; 1 to " + std::to_string(limits.max_frames - 1) +
                        " allowed");
    }
    if (!get_u32(p, end, &len) || len > static_cast<std::size_t>(end - p)) return bad_record("truncated");
    Message& m = out[r];
    Status st = decode_header(p, len, &m.header, limits);
    if (!st.ok()) return bad_record(st.detail);
    if (!batched_type(m.header.type)) {
      return bad_record(std::string("a ") + to_string(m.header.type) +
                        " cannot be batched (only submit, task, result)");
    }
    p += len;
    m.payload.clear();
    m.payload.reserve(frames - 1 + (m.header.type == MsgType::kResult ? 2 : 0));
    for (std::size_t i = 1; i < frames; ++i) {
      if (!get_u32(p, end, &len) || len > static_cast<std::size_t>(end - p)) return bad_record("truncated");
      m.payload.emplace_back(p, len);
      p += len;
    }
  }
  if (p != end) {
    return bad(std::to_string(end - p) + " bytes after the last of " + std::to_string(n) + " records");
  }
  *count = n;
  return Status{};
}

TimingField read_timing(const Header& h, Timing* out) {
  *out = Timing{};
  if (h.targets.empty()) return TimingField::kAbsent;
  if (h.targets.size() != 2) return TimingField::kMalformed;
  const std::int64_t started = h.targets[0];
  const std::int64_t run = h.targets[1];
  if (started < 0 || run < 0 || started > kMaxTimestampUs || run / 1000 > kMaxTimestampUs - started) {
    return TimingField::kMalformed;
  }
  out->started_us = started;
  out->run_ns = run;
  return TimingField::kOk;
}

void put_timing(const Timing& t, Header* h) {
  h->targets.clear();
  if (!t.present()) return;
  h->targets.push_back(t.started_us);
  h->targets.push_back(t.run_ns);
}

Status check_output(const Header& h, const std::vector<zmq::message_t>& payload) {
  if (payload.size() != 2) {
    return fail(DecodeError::kBadOutput,
                "output needs 2 payload frames (stdout, stderr), not " + std::to_string(payload.size()));
  }
  for (const auto& f : payload) {
    if (f.size() > kMaxOutputChunk) {
      return fail(DecodeError::kBadOutput, "output chunk of " + std::to_string(f.size()) +
                                               " bytes exceeds " + std::to_string(kMaxOutputChunk));
    }
  }
  if (h.targets.size() != 2 || h.targets[0] < 0 || h.targets[1] < 0) {
    return fail(DecodeError::kBadOutput, "output targets must be two offsets (stdout, stderr), not negative");
  }
  if ((h.status & ~kOutputFlagsMask) != 0) {
    return fail(DecodeError::kBadOutput, "output status has unknown flags " + std::to_string(h.status));
  }
  return Status{};
}

}  // namespace zfarm::proto
