// Helpers of the socket loop that need no socket: which addresses may be
// bound without authentication, and the connection file clients read.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "curve.hpp"

namespace zfarm::broker {

// True when binding `endpoint` exposes the broker only to this machine:
// ipc:// and inproc://, or tcp:// on 127.x.y.z, localhost or [::1].
// Otherwise false, with the reason in *why.  Anyone who can connect can run
// code on the engines, so the broker turns CURVE on for every other address.
bool is_local_endpoint(std::string_view endpoint, std::string* why);

// What the connection file says (docs/security.rst, "Connection file").
struct ConnectionInfo {
  std::string client;  // endpoint clients connect to
  std::string engine;  // endpoint engines connect to
  long pid = 0;
  // Largest frame the broker accepts (ZMQ_MAXMSGSIZE); -1: no limit.
  // Clients check it before sending, for a clear error.
  std::int64_t max_message_bytes = -1;
  bool curve = false;  // keys below are set only when true
  CurveKeys keys;
};

// Writes {"version":1,"client":...,"engine":...,"pid":N,
// "max_message_bytes":N[,"curve":{...}]} to `path` atomically (a temporary
// file in the same directory, then rename) with mode 0600: it holds secret
// keys.  Returns an empty string on success, else what went wrong.
std::string write_connection_file(const std::string& path, const ConnectionInfo& info);

// The JSON text write_connection_file writes.
std::string connection_file_text(const ConnectionInfo& info);

// Reads a connection file written by write_connection_file (for --reuse).
// Unknown fields are ignored; a "curve" section must hold all six keys, each
// a valid Z85 key, and each public key must match its secret key.  Empty
// string on success, else what is wrong.
std::string parse_connection_file(std::string_view text, ConnectionInfo* out);
std::string read_connection_file(const std::string& path, ConnectionInfo* out);

}  // namespace zfarm::broker
