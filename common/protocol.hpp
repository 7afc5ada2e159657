// zfarm wire protocol: one codec shared by broker, engine and client.
//
// A message on the wire is multipart:
//
//   [routing envelope ...] [signature] [header] [payload ...]
//
// The envelope is added and stripped by ROUTER sockets and is not seen here.
// The signature frame is the four bytes "ZFRM" followed by one version byte.
// The header frame is a msgpack array (see Header): six fixed items and an
// optional seventh, a map of task options and request fields (see Options),
// present only when one of them is set.  Payload frames are opaque
// bytes that only the Python ends interpret (a pickle and its out-of-band
// buffers); the broker forwards them untouched.
//
// docs/protocol.rst describes the same format in prose.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

namespace zfarm::proto {

inline constexpr char kMagic[4] = {'Z', 'F', 'R', 'M'};
inline constexpr std::uint8_t kVersion = 1;
inline constexpr std::size_t kSignatureSize = 5;

// Tunables of the decoder.  A peer sending more than this is refused before
// anything large is allocated.
struct Limits {
  std::size_t max_frames = 4096;          // signature + header + payload frames
  std::size_t max_header_bytes = 1024 * 1024;  // room for 65536 ids in Options
  std::size_t max_targets = 65536;         // entries of Header::targets
  std::size_t max_text_bytes = 16 * 1024;  // Header::text
  std::size_t max_ids = 65536;             // entries of each Options list
  std::size_t max_batch_records = 4096;    // records in one Batch
};

enum class MsgType : std::uint8_t {
  kRegister = 1,       // engine -> broker   aux = credit (tasks it may hold)
  kRegisterReply = 2,  // broker -> engine   aux = engine id, status = heartbeat ms
  kHeartbeat = 3,      // engine <-> broker
  kSubmit = 4,         // client -> broker   id = first task id, targets = engines
  kTask = 5,           // broker -> engine   id = task id
  kResult = 6,         // engine -> broker -> client   status = ResultStatus
  kStatus = 7,         // client -> broker   id = request id
  kStatusReply = 8,    // broker -> client   payload[0] = msgpack map
  kShutdown = 9,       // client -> broker (whole cluster), broker -> engine
  kError = 10,         // either way: text says what was wrong with a message
  kHello = 11,         // client -> broker: first contact; opts.session names
                       //   the client's session (a reconnecting client reuses it)
  kAbort = 12,         // client -> broker   opts.ids: drop these tasks if still queued
  kInterrupt = 13,     // client -> broker   opts.ids tasks (or targets = engines) to
                       //   interrupt; broker -> engine  id = the running task
  kAck = 14,           // client -> broker   opts.ids: results received, free them
  kFetch = 15,         // client -> broker   opts.ids: send these results (again)
  kEvent = 16,         // broker -> client   status = EventKind, aux = engine id
  kWelcome = 17,       // broker -> client   reply to Hello and to a client
                       //   Heartbeat: text = broker incarnation, targets =
                       //   engine ids, status = heartbeat ms
  kOutput = 18,        // engine -> broker -> client: text a running task
                       //   printed (revision 1; see "Output" below)
  kCredit = 19,        // engine -> broker: targets = [engine id], aux = new
                       //   credit, opts.ids = prefetched tasks given back
                       //   (revision 2; see "Credit" below)
  kBatch = 20,         // any way: aux = record count, one payload frame holding
                       //   Submit, Task or Result records (revision 4; see
                       //   "Batch" below)
};
inline constexpr std::uint8_t kMaxMsgType = 20;

// Additions to protocol version 1 that do not change the wire format of
// older messages.  A peer names the revision it speaks in opts.revision of
// RegisterReply and Welcome (absent: 0, the first one); an engine names
// its own in Register.
//   1: Output.  The broker forwards it; an engine sends it only to a broker
//      that announced revision 1 or later.
//   2: Credit.  An engine sends it only to a broker that announced revision
//      2 or later; such a broker keeps the payload of every task it sends to
//      an engine that announced revision 2, so a task given back can go out
//      again.
//   3: Result timing (see Timing below).  Needs no announcement: the field
//      it uses was always empty in a Result and was ignored by every peer,
//      so an older broker drops the timing and an older client ignores it.
//   4: Batch.  A peer sends a Batch only to one that announced revision 4
//      or later: a client and an engine to a broker that did (Welcome,
//      RegisterReply), the broker to a client that did in Hello and to an
//      engine that did in Register.
inline constexpr std::int64_t kRevision = 4;

// Batch{aux = n} + exactly one payload frame, the body: n records, one after
// another, each the frames of one message without its signature:
//
//   record := frame count:u32  frame*      (the header frame, then payload frames)
//   frame  := length:u32  bytes            (u32: big-endian)
//
// A record is a Submit, a Task or a Result, decoded with the same limits as
// a message of its own; a Batch is one message on the wire where n small
// messages would have been n, which spares libzmq its per-message and
// per-frame work (most of the broker's cost per task).  Only small records
// are batched: their payload bytes are copied into the body and out again.
inline constexpr std::size_t kBatchRecordBytes = 4 * 1024;  // payload bytes of a record a sender batches
inline constexpr std::size_t kBatchMaxRecords = 1024;       // records a sender puts in one Batch
inline constexpr std::size_t kBatchBodyBytes = 256 * 1024;  // body bytes a sender stops adding at

// Result{targets = [started, run time]} (revision 3): when the task started
// on its engine, in microseconds since the Unix epoch by the engine's wall
// clock, and how long it ran, in nanoseconds by the engine's monotonic
// clock.  Empty targets: no timing (the task did not run on an engine, or
// the engine or broker is of an older revision).  A start and a duration
// rather than two wall-clock times: the engine reads the monotonic clock
// at both ends anyway (its credit policy), so the timing costs one clock
// read more, and a run time is not bent by a wall-clock step.
struct Timing {
  std::int64_t started_us = 0;
  std::int64_t run_ns = -1;  // -1: absent
  bool present() const { return run_ns >= 0; }
};
// 10000-01-01T00:00:00Z: later start or end times are refused (a client
// could not show them as dates).
inline constexpr std::int64_t kMaxTimestampUs = 253402300800LL * 1000000;

// Credit{targets = [engine id], aux = credit, opts.ids = given back}: the
// engine's credit from now on (at least 1), and the tasks it gives back:
// prefetched ones it never started and no longer holds.  The engine id is
// the one of the registration the engine holds those tasks under: a Credit
// naming another (an earlier registration's) is ignored whole.  The broker
// queues each given-back task again where it came from, ahead of the tasks
// queued after it; a give-back is not a retry.  docs/protocol.rst has the
// races.

// Output{id = task id, aux = engine id, status = OutputFlags,
//        targets = [stdout offset, stderr offset]} + exactly two payload frames
// (the new stdout text, the new stderr text; UTF-8, either may be empty).
// The offsets count the bytes of that stream sent for the task before this
// message, so a receiver can tell a repeat or a gap.  Best effort: the
// task's Result carries its whole output, whatever was streamed.
inline constexpr std::size_t kMaxOutputChunk = 64 * 1024;  // bytes per payload frame
enum OutputFlags : std::uint32_t {
  kStdoutCapped = 1,  // the task reached its stdout limit: no more stdout follows
  kStderrCapped = 2,
};
inline constexpr std::uint32_t kOutputFlagsMask = kStdoutCapped | kStderrCapped;

// Event::status values.
enum class EventKind : std::uint32_t {
  kEngineJoined = 0,
  kEngineLeft = 1,
};

// How a task ended.  Every submitted task ends in exactly one Result.
enum class ResultStatus : std::uint32_t {
  kOk = 0,
  kRemoteError = 1,  // the task raised; payload holds the exception
  kEngineDied = 2,   // the engine running or queued to run it was lost
  kAborted = 3,      // dropped from a queue on request
  kRejected = 4,     // the broker refused it (bad target, duplicate id, ...)
  kTimedOut = 5,
  kLost = 6,        // the broker restarted and no longer knows the task
  kImpossible = 7,  // a dependency failed or can never be met (after/follow/engines)
};

// Submit::targets uses these sentinels alone, or a list of engine ids.
inline constexpr std::int64_t kLoadBalanced = -1;  // targets == {-1}
inline constexpr std::int64_t kAllEngines = -2;    // reserved; clients list engine ids instead

// The optional seventh header item: a msgpack map whose keys are the names
// below.  Only set fields are written; unknown keys are ignored, so a newer
// peer may add some.  A known key with a value of the wrong type is an error.
struct Options {
  std::int64_t retries = 0;           // "retries": Submit (load-balanced)
  std::int64_t timeout_ms = 0;        // "timeout_ms": Submit; 0 = none, counted from submission
  std::int64_t priority = 0;          // "priority": Submit; higher runs first
  std::vector<std::uint64_t> after;   // "after": Submit; run once these tasks ended
  std::vector<std::uint64_t> follow;  // "follow": Submit; run where these ran
  std::vector<std::int64_t> engines;  // "engines": Submit; load-balanced only among these
  std::vector<std::uint64_t> ids;     // "ids": Abort, Interrupt, Ack, Fetch, Credit
  std::string session;                // "session": Hello
  std::int64_t revision = 0;          // "revision": Register, RegisterReply, Welcome (see kRevision)
  bool empty() const {
    return retries == 0 && timeout_ms == 0 && priority == 0 && after.empty() && follow.empty() &&
           engines.empty() && ids.empty() && session.empty() && revision == 0;
  }
};

struct Header {
  MsgType type = MsgType::kError;
  std::uint64_t id = 0;
  std::vector<std::int64_t> targets;
  std::uint32_t status = 0;
  std::int64_t aux = 0;
  std::string text;
  Options opts;
};

enum class TimingField { kAbsent, kOk, kMalformed };
// Reads a Result's timing.  kMalformed (and *out absent): not two items, a
// negative one, or a start or end past kMaxTimestampUs.
TimingField read_timing(const Header& h, Timing* out);
// Puts the timing in h.targets (clears them when t is absent).
void put_timing(const Timing& t, Header* h);

struct Message {
  Header header;
  std::vector<zmq::message_t> payload;
};

enum class DecodeError {
  kNone = 0,
  kTooFewFrames,
  kTooManyFrames,
  kBadSignature,
  kWrongVersion,
  kHeaderTooLarge,
  kBadMsgpack,
  kBadHeaderShape,
  kUnknownType,
  kBadOutput,  // an Output message of the wrong shape (see check_output)
  kBadBatch,   // a Batch of the wrong shape, or a record in it that is not
               //   a well-formed Submit, Task or Result (see decode_batch)
};

// An error as a value: what went wrong and a sentence for the peer or log.
struct Status {
  DecodeError code = DecodeError::kNone;
  std::string detail;
  bool ok() const { return code == DecodeError::kNone; }
};

const char* to_string(DecodeError e);
const char* to_string(MsgType t);
const char* to_string(ResultStatus s);

// Encodes the signature and header frames and appends them to `out`.
void encode_header(const Header& h, std::vector<zmq::message_t>& out);
// Makes `f` the signature frame every message starts with.
void write_signature(zmq::message_t& f);

// A header with at most two targets and no text or options (a Task's, a
// Result's with its timing), written into `out` (room for
// kSmallHeaderBytes) as encode_header writes its frame: the bytes written,
// or 0 (nothing written) when `h` is not such a header.  A sender that
// batches the message need not make frames of it (pack_batch with
// BatchRecords).
inline constexpr std::size_t kSmallHeaderBytes = 1 + 1 + 9 + 1 + 2 * 9 + 5 + 9 + 1;
std::size_t encode_small_header(const Header& h, unsigned char* out);

// Builds a whole message: signature, header, then the payload frames (moved).
std::vector<zmq::message_t> encode(const Header& h, std::vector<zmq::message_t> payload = {});

// Decodes frames[first..] (the part after any routing envelope).  On success
// (and on kBadOutput) the payload frames are moved into out->payload.  Never
// throws on bad input.
Status decode(std::vector<zmq::message_t>& frames, std::size_t first, Message* out,
              const Limits& limits = Limits{});

// The shape an Output message must have (see kOutput above): two payload
// frames of at most kMaxOutputChunk bytes, two non-negative offsets, only
// known flags.  decode() applies it to every Output.
Status check_output(const Header& h, const std::vector<zmq::message_t>& payload);

// The signature frame: magic and version (used by decode, and by the broker
// to read the header of a message that failed on its frame count).
Status check_signature(const zmq::message_t& sig);

// Whether the message `frames` (signature, header, payload ...: what encode
// makes) may go into a Batch: a Submit, Task or Result whose payload is at
// most kBatchRecordBytes.  `type` is its header's type.
bool batchable(MsgType type, const std::vector<zmq::message_t>& frames);

// A Batch of encoded messages (each as encode makes it: signature, header,
// payload ...), in order: its signature, header and body frames.  The
// messages are only read.  At least one; the caller keeps to
// kBatchMaxRecords and kBatchBodyBytes (batch_bytes tells a message's share).
std::vector<zmq::message_t> pack_batch(const std::vector<const std::vector<zmq::message_t>*>& messages);
std::size_t batch_bytes(const std::vector<zmq::message_t>& frames);
// batchable() and batch_bytes() in one pass over the frames: the message's
// share of a Batch body when it may go into one, else 0.
std::size_t batch_record_bytes(MsgType type, const std::vector<zmq::message_t>& frames);
// The same for a message given as its header's size and its payload frames.
std::size_t batch_record_bytes(MsgType type, std::size_t header_bytes, const zmq::message_t* payload,
                               std::size_t payload_frames);

// One record of a Batch given as its parts: the header's bytes and the
// payload frames (only read).  pack_batch() with these writes the same body
// as with whole messages, without the header having been a frame.
struct BatchRecord {
  const void* header;
  std::size_t header_size;
  const zmq::message_t* payload;
  std::size_t payload_frames;
};
std::vector<zmq::message_t> pack_batch(const std::vector<BatchRecord>& records, std::size_t body_size);

// The records of a decoded Batch, into out[0..n) (resized; the storage of
// earlier calls is reused).  All or nothing: on an error `out` is left
// empty.  A record may not be a Batch, and only Submit, Task and Result
// may be batched (kBadBatch); its header and frame count are checked as
// decode() checks a message's.
Status decode_batch(const Message& batch, std::vector<Message>& out, const Limits& limits = Limits{});

// The same into out[0..*count), where `out` is never shrunk: the storage of
// records beyond *count (headers, payload vectors) stays for later batches.
// Records beyond *count are storage only, not to be read.  All or nothing:
// on an error *count is 0 and no record in `out` holds frames.
Status decode_batch(const Message& batch, std::vector<Message>& out, std::size_t* count,
                    const Limits& limits = Limits{});

// Header alone, from raw bytes (used by decode and by tests and the fuzzer).
Status decode_header(const void* data, std::size_t size, Header* out, const Limits& limits);

}  // namespace zfarm::proto
