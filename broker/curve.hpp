// CurveZMQ keys and the ZAP handler that decides who may connect.
//
// With CURVE on, both broker sockets are CURVE servers with one server key
// pair.  CURVE alone lets in anyone who knows the server's public key, so a
// ZAP handler (ZAP 1.0, on inproc://zeromq.zap.01) admits on the client
// socket only the client public keys and on the engine socket only the engine
// public keys: the pairs the broker wrote into its connection file, plus any
// listed in an --authorized-keys file.  The sockets tell the handler which
// side they are through ZMQ_ZAP_DOMAIN.
//
// Everything but ZapHandler is socket-free, so doctest drives it directly.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <zmq.hpp>

namespace zfarm::broker {

// A CURVE key is 32 bytes; its Z85 text form is 40 characters.
inline constexpr std::size_t kCurveKeyBytes = 32;
inline constexpr std::size_t kCurveKeyZ85Chars = 40;

// ZMQ_ZAP_DOMAIN of each broker socket.
inline constexpr char kClientDomain[] = "zfarm-client";
inline constexpr char kEngineDomain[] = "zfarm-engine";

// Z85 text, as written in the connection file.
struct KeyPair {
  std::string public_key;
  std::string secret_key;
};

// The three key pairs of a CURVE cluster.
struct CurveKeys {
  KeyPair server;
  KeyPair client;
  KeyPair engine;
};

// Fresh key pairs from libzmq's zmq_curve_keypair.  Empty string on success,
// else what went wrong (libzmq built without CURVE).
std::string generate_curve_keys(CurveKeys* out);

// True for 40 characters of the Z85 alphabet that decode to a key.
bool is_z85_key(std::string_view text);
// The 32 bytes of a Z85 key; false if `text` is not one.
bool z85_key_to_binary(std::string_view text, std::string* out);
// The public key (Z85) that belongs to a secret key (Z85); false if the
// secret key is not a key.
bool public_key_of(std::string_view secret_key, std::string* public_key);

// Which public keys (32 bytes each, binary) may connect to which socket.
struct KeyRing {
  std::set<std::string> client;
  std::set<std::string> engine;
};

// The public keys of `keys` (client on the client socket, engine on the
// engine socket).  False if one is not a key.
bool add_cluster_keys(const CurveKeys& keys, KeyRing* ring);

// Adds the keys of an authorized-keys text: one "client <Z85 key>" or
// "engine <Z85 key>" per line; blank lines and lines starting with '#' are
// skipped.  Returns an empty string on success, else the first bad line
// ("line 3: ...") and the ring is left unchanged.
std::string parse_authorized_keys(std::string_view text, KeyRing* ring);
// The same, reading the file at `path` (errors name the file).
std::string read_authorized_keys(const std::string& path, KeyRing* ring);

// A ZAP 1.0 request as its frames arrive on the handler's socket.
struct ZapRequest {
  std::string version;     // "1.0"
  std::string request_id;  // echoed in the reply
  std::string domain;      // ZMQ_ZAP_DOMAIN of the socket being connected to
  std::string address;     // the peer's IP address
  std::string identity;    // the peer's routing id
  std::string mechanism;   // "NULL", "PLAIN" or "CURVE"
  std::vector<std::string> credentials;  // CURVE: one frame, the client's public key
};

// A ZAP reply: status_code "200" admits, "400" refuses, "500" is an
// internal error (the peer is refused as well).
struct ZapDecision {
  std::string status_code;
  std::string status_text;
  std::string user_id;  // "client" or "engine" for admitted peers
  bool admitted() const { return status_code == "200"; }
};

// Frames (as strings) into a request; false with the reason in *why when
// there are fewer than six frames.
bool parse_zap_request(const std::vector<std::string>& frames, ZapRequest* out, std::string* why);

// The decision: admit CURVE peers whose key is in the ring for the socket's
// domain; refuse everything else (other mechanisms, unknown domains, wrong
// ZAP version, keys of the other side).
ZapDecision zap_decide(const ZapRequest& request, const KeyRing& ring);

// The ZAP endpoint libzmq asks.
inline constexpr char kZapEndpoint[] = "inproc://zeromq.zap.01";

// Answers ZAP requests on its own thread with zap_decide.  Construct it
// before binding the CURVE sockets and destroy it after closing them: a
// CURVE server finding no handler admits everyone.  One per context.
class ZapHandler {
 public:
  // Binds kZapEndpoint in `ctx` (throws zmq::error_t if it cannot) and
  // starts the thread.
  ZapHandler(zmq::context_t& ctx, KeyRing ring);
  ~ZapHandler();
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  // Connection attempts refused so far (any thread).
  std::uint64_t refused() const { return refused_.load(std::memory_order_relaxed); }

 private:
  void run();

  zmq::socket_t socket_;
  KeyRing ring_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> refused_{0};
  std::thread thread_;
};

}  // namespace zfarm::broker
