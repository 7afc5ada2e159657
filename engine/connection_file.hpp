// Reading the engine's part of the broker's connection file, a small JSON
// object: {"version": 1, "client": "tcp://...", "engine": "tcp://...",
// "pid": N, "curve": {...}}.  Only the fields named here are extracted;
// everything else is skipped, so the broker may add fields without breaking
// older engines.  "curve" is present only when the broker runs CurveZMQ.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace zfarm::engine {

// Finds the top-level string member `key` of the JSON object in `text`.
// Returns false (and a reason in *why) if the text is not a JSON object, the
// key is missing or its value is not a string.
bool json_string_field(std::string_view text, std::string_view key, std::string* value, std::string* why);

// Finds the top-level member `key` whose value is an object; *object is the
// object's text (braces included), pointing into `text`.
bool json_object_field(std::string_view text, std::string_view key, std::string_view* object, std::string* why);

// Z85 text of a 32-byte CurveZMQ key.
inline constexpr std::size_t kZ85KeyChars = 40;

struct ConnectionInfo {
  std::string engine;  // the broker's engine endpoint
  bool curve = false;  // the file has a "curve" section; the keys below are set
  std::string server_public;  // curve.server_public (the broker's key)
  std::string engine_public;  // curve.engine_public
  std::string engine_secret;  // curve.engine_secret
};

// Reads the file at `path`: "engine", and the curve keys if there is a
// "curve" section.  False with a reason if the file cannot be read, has no
// usable endpoint, or has a "curve" section without the three engine keys.
bool read_connection_file(const std::string& path, ConnectionInfo* info, std::string* why);

// Reads the file at `path` and extracts "engine".  False with a reason if the
// file cannot be read or has no usable endpoint.
bool read_engine_endpoint(const std::string& path, std::string* endpoint, std::string* why);

}  // namespace zfarm::engine
