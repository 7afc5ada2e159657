// Helpers of the socket loop that need no socket: which addresses may be
// bound without authentication, and the connection file clients read.
#pragma once

#include <string>
#include <string_view>

namespace zfarm::broker {

// True when binding `endpoint` exposes the broker only to this machine:
// ipc:// and inproc://, or tcp:// on 127.x.y.z, localhost or [::1].
// Otherwise false, with the reason in *why.  Anyone who can connect can run
// code on the engines, so every other address waits for CurveZMQ.
bool is_local_endpoint(std::string_view endpoint, std::string* why);

// Writes {"version":1,"client":...,"engine":...,"pid":N} to `path`
// atomically (a temporary file in the same directory, then rename) with mode
// 0600.  Returns an empty string on success, else what went wrong.
std::string write_connection_file(const std::string& path, const std::string& client_endpoint,
                                  const std::string& engine_endpoint, long pid);

}  // namespace zfarm::broker
