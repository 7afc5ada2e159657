#include "connection_file.hpp"

#include <cstdint>
#include <fstream>
#include <sstream>

namespace zfarm::engine {

namespace {

// A cursor over JSON text: just enough of a parser to walk one object.
struct Reader {
  std::string_view s;
  std::size_t i = 0;

  void skip_ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  bool eat(char c) {
    skip_ws();
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  }

  static void put_utf8(std::uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  bool hex4(std::uint32_t* v) {
    if (s.size() - i < 4) return false;
    *v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s[i++];
      *v <<= 4;
      if (c >= '0' && c <= '9') *v |= static_cast<std::uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') *v |= static_cast<std::uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') *v |= static_cast<std::uint32_t>(c - 'A' + 10);
      else return false;
    }
    return true;
  }

  // A JSON string at the cursor, unescaped into *out.
  bool string(std::string* out) {
    skip_ws();
    if (i >= s.size() || s[i] != '"') return false;
    ++i;
    out->clear();
    while (i < s.size()) {
      const char c = s[i++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (i >= s.size()) return false;
      const char e = s[i++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          std::uint32_t cp = 0;
          if (!hex4(&cp)) return false;
          if (cp >= 0xD800 && cp < 0xDC00) {  // a surrogate pair
            std::uint32_t lo = 0;
            if (s.size() - i < 2 || s[i] != '\\' || s[i + 1] != 'u') return false;
            i += 2;
            if (!hex4(&lo) || lo < 0xDC00 || lo > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(cp, out);
          break;
        }
        default: return false;
      }
    }
    return false;  // unterminated
  }

  // Skips any JSON value (nested ones by bracket depth, strings honoured).
  bool skip_value() {
    skip_ws();
    if (i >= s.size()) return false;
    std::string scratch;
    if (s[i] == '"') return string(&scratch);
    if (s[i] == '{' || s[i] == '[') {
      int depth = 0;
      while (i < s.size()) {
        const char c = s[i];
        if (c == '"') {
          if (!string(&scratch)) return false;
          continue;
        }
        ++i;
        if (c == '{' || c == '[') ++depth;
        if (c == '}' || c == ']') {
          if (--depth == 0) return true;
        }
      }
      return false;
    }
    // A number, true, false or null: up to the next delimiter.
    const std::size_t start = i;
    while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\n' &&
           s[i] != '\r' && s[i] != '\t') {
      ++i;
    }
    return i > start;
  }
};

// `"key"`, built by appending (GCC 12 warns falsely on "lit" + string).
std::string quoted(std::string_view key) {
  std::string q;
  q.reserve(key.size() + 2);
  q.push_back('"');
  q.append(key);
  q.push_back('"');
  return q;
}

}  // namespace

namespace {

// Positions *r at the value of the top-level member `key` of the object in
// `text`.  False with a reason if there is none or the text is malformed.
bool find_member(std::string_view text, std::string_view key, Reader* r, std::string* why) {
  *r = Reader{text};
  if (!r->eat('{')) {
    *why = "not a JSON object";
    return false;
  }
  if (r->eat('}')) {
    *why = "no " + quoted(key) + " field";
    return false;
  }
  std::string name;
  while (true) {
    if (!r->string(&name) || !r->eat(':')) {
      *why = "malformed JSON object";
      return false;
    }
    if (name == key) return true;
    if (!r->skip_value()) {
      why->assign("malformed JSON value for \"").append(name).append("\"");
      return false;
    }
    if (r->eat(',')) continue;
    if (r->eat('}')) break;
    *why = "malformed JSON object";
    return false;
  }
  *why = "no " + quoted(key) + " field";
  return false;
}

}  // namespace

bool json_string_field(std::string_view text, std::string_view key, std::string* value, std::string* why) {
  Reader r{text};
  if (!find_member(text, key, &r, why)) return false;
  if (!r.string(value)) {
    *why = quoted(key) + " is not a string";
    return false;
  }
  return true;
}

bool json_object_field(std::string_view text, std::string_view key, std::string_view* object, std::string* why) {
  Reader r{text};
  if (!find_member(text, key, &r, why)) return false;
  r.skip_ws();
  const std::size_t start = r.i;
  if (start >= text.size() || text[start] != '{' || !r.skip_value()) {
    *why = quoted(key) + " is not a JSON object";
    return false;
  }
  *object = text.substr(start, r.i - start);
  return true;
}

bool read_connection_file(const std::string& path, ConnectionInfo* info, std::string* why) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *why = "cannot read " + path;
    return false;
  }
  std::ostringstream body_stream;
  body_stream << in.rdbuf();
  const std::string body = body_stream.str();
  std::string err;
  if (!json_string_field(body, "engine", &info->engine, &err)) {
    *why = path + ": " + err;
    return false;
  }
  if (info->engine.empty()) {
    *why = path + ": empty \"engine\" endpoint";
    return false;
  }
  info->curve = false;
  std::string_view curve;
  if (!json_object_field(body, "curve", &curve, &err)) {
    if (err == "no \"curve\" field") return true;  // plain text: no CURVE section
    *why = path + ": " + err;
    return false;
  }
  struct {
    const char* name;
    std::string* value;
  } keys[] = {{"server_public", &info->server_public},
              {"engine_public", &info->engine_public},
              {"engine_secret", &info->engine_secret}};
  for (auto& k : keys) {
    if (!json_string_field(curve, k.name, k.value, &err)) {
      *why = path + ": curve: " + err;
      return false;
    }
    if (k.value->size() != kZ85KeyChars) {
      *why = path + ": curve: \"" + k.name + "\" is not a 40-character Z85 key";
      return false;
    }
  }
  info->curve = true;
  return true;
}

bool read_engine_endpoint(const std::string& path, std::string* endpoint, std::string* why) {
  ConnectionInfo info;
  if (!read_connection_file(path, &info, why)) return false;
  *endpoint = info.engine;
  return true;
}

}  // namespace zfarm::engine
