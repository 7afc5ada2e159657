// Reading the engine endpoint from the broker's connection file, a small
// JSON object: {"version": 1, "client": "tcp://...", "engine": "tcp://...",
// "pid": N}.  Only top-level string fields are extracted; everything else is
// skipped, so the broker may add fields without breaking older engines.
#pragma once

#include <string>
#include <string_view>

namespace zfarm::engine {

// Finds the top-level string member `key` of the JSON object in `text`.
// Returns false (and a reason in *why) if the text is not a JSON object, the
// key is missing or its value is not a string.
bool json_string_field(std::string_view text, std::string_view key, std::string* value, std::string* why);

// Reads the file at `path` and extracts "engine".  False with a reason if the
// file cannot be read or has no usable endpoint.
bool read_engine_endpoint(const std::string& path, std::string* endpoint, std::string* why);

}  // namespace zfarm::engine
