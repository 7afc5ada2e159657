#include "endpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace zfarm::broker {

namespace {

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// "127." followed by three dot-separated decimal octets.
bool is_ipv4_loopback(std::string_view host) {
  if (!starts_with(host, "127.")) return false;
  int parts = 2, digits = 0;  // "127" was the first; now in the second
  for (char c : host.substr(4)) {
    if (c == '.') {
      if (digits == 0) return false;
      ++parts;
      digits = 0;
    } else if (std::isdigit(static_cast<unsigned char>(c)) && digits < 3) {
      ++digits;
    } else {
      return false;
    }
  }
  return parts == 4 && digits > 0;
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string errno_text(const char* what, const std::string& path) {
  return std::string(what) + " " + path + ": " + std::strerror(errno);
}

}  // namespace

bool is_local_endpoint(std::string_view endpoint, std::string* why) {
  if (starts_with(endpoint, "ipc://") || starts_with(endpoint, "inproc://")) return true;
  if (!starts_with(endpoint, "tcp://")) {
    *why = "only tcp://, ipc:// and inproc:// endpoints are supported";
    return false;
  }
  std::string_view rest = endpoint.substr(6);
  std::string_view host;
  if (starts_with(rest, "[")) {
    const auto close = rest.find(']');
    if (close == std::string_view::npos) {
      *why = "unterminated [ in the address";
      return false;
    }
    host = rest.substr(0, close + 1);
    rest = rest.substr(close + 1);
  } else {
    const auto colon = rest.rfind(':');
    host = rest.substr(0, colon);
    rest = colon == std::string_view::npos ? std::string_view() : rest.substr(colon);
  }
  if (rest.empty() || rest[0] != ':') {
    *why = "the address has no port";
    return false;
  }
  if (host == "localhost" || host == "[::1]" || is_ipv4_loopback(host)) return true;
  why->assign(host);
  why->append(" is not a loopback address: other machines could connect and run code on the engines");
  return false;
}

std::string connection_file_text(const ConnectionInfo& info) {
  std::string body = "{\"version\": 1, \"client\": " + json_string(info.client) +
                     ", \"engine\": " + json_string(info.engine) + ", \"pid\": " + std::to_string(info.pid) +
                     ", \"max_message_bytes\": " + std::to_string(info.max_message_bytes);
  if (info.curve) {
    const CurveKeys& k = info.keys;
    body += ",\n \"curve\": {\"server_public\": " + json_string(k.server.public_key) +
            ", \"server_secret\": " + json_string(k.server.secret_key) +
            ",\n           \"client_public\": " + json_string(k.client.public_key) +
            ", \"client_secret\": " + json_string(k.client.secret_key) +
            ",\n           \"engine_public\": " + json_string(k.engine.public_key) +
            ", \"engine_secret\": " + json_string(k.engine.secret_key) + "}";
  }
  return body + "}\n";
}

std::string write_connection_file(const std::string& path, const ConnectionInfo& info) {
  const std::string body = connection_file_text(info);
  const long pid = info.pid;
  const std::string tmp = path + ".tmp." + std::to_string(pid);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return errno_text("cannot create", tmp);
  // The umask cannot widen 0600, but a stale file of ours could be wider.
  if (::fchmod(fd, 0600) != 0) {
    std::string err = errno_text("cannot chmod", tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return err;
  }
  std::size_t off = 0;
  while (off < body.size()) {
    const ssize_t n = ::write(fd, body.data() + off, body.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::string err = errno_text("cannot write", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return err;
    }
    off += static_cast<std::size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  std::string err = synced ? std::string() : errno_text("cannot flush", tmp);
  if (::close(fd) != 0 && err.empty()) err = errno_text("cannot close", tmp);
  if (!err.empty()) {
    ::unlink(tmp.c_str());
    return err;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = errno_text("cannot rename to", path);
    ::unlink(tmp.c_str());
    return err;
  }
  return {};
}

namespace {

// Reads a key pair of the "curve" section and checks that it belongs together.
std::string read_pair(const nlohmann::json& curve, const char* name, KeyPair* out) {
  const std::string pub = std::string(name) + "_public", sec = std::string(name) + "_secret";
  for (const std::string& field : {pub, sec}) {
    const auto it = curve.find(field);
    if (it == curve.end() || !it->is_string()) return "\"curve\" has no string \"" + field + "\"";
    if (!is_z85_key(it->get<std::string>())) return "\"curve\": \"" + field + "\" is not a Z85 key";
  }
  out->public_key = curve[pub].get<std::string>();
  out->secret_key = curve[sec].get<std::string>();
  std::string derived;
  if (!public_key_of(out->secret_key, &derived) || derived != out->public_key) {
    return "\"curve\": \"" + pub + "\" does not belong to \"" + sec + "\"";
  }
  return {};
}

}  // namespace

std::string parse_connection_file(std::string_view text, ConnectionInfo* out) {
  const nlohmann::json doc = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) return "not a JSON object";
  ConnectionInfo info;
  for (const char* field : {"client", "engine"}) {
    const auto it = doc.find(field);
    if (it == doc.end() || !it->is_string()) return std::string("no string \"") + field + "\" endpoint";
  }
  info.client = doc["client"].get<std::string>();
  info.engine = doc["engine"].get<std::string>();
  if (const auto it = doc.find("pid"); it != doc.end() && it->is_number_integer()) info.pid = it->get<long>();
  if (const auto it = doc.find("max_message_bytes"); it != doc.end() && it->is_number_integer()) {
    info.max_message_bytes = it->get<std::int64_t>();
  }
  if (const auto it = doc.find("curve"); it != doc.end()) {
    if (!it->is_object()) return "\"curve\" is not an object";
    for (const auto& [name, pair] : {std::pair{"server", &info.keys.server}, std::pair{"client", &info.keys.client},
                                     std::pair{"engine", &info.keys.engine}}) {
      std::string err = read_pair(*it, name, pair);
      if (!err.empty()) return err;
    }
    info.curve = true;
  }
  *out = std::move(info);
  return {};
}

std::string read_connection_file(const std::string& path, ConnectionInfo* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "cannot read " + path + ": " + std::strerror(errno);
  std::ostringstream text;
  text << in.rdbuf();
  std::string err = parse_connection_file(text.str(), out);
  return err.empty() ? err : path + ": " + err;
}

}  // namespace zfarm::broker
