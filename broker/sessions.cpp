#include "sessions.hpp"

#include <algorithm>
#include <cstdint>
#include <random>

namespace zfarm::broker {

const std::string& Sessions::session_of(const std::string& identity) {
  auto it = session_by_identity_.find(identity);
  if (it != session_by_identity_.end()) return *it->second;
  bind(identity, identity);
  return *session_by_identity_.at(identity);
}

Sessions::Bind Sessions::bind(const std::string& session, const std::string& identity) {
  const std::string& name = session.empty() ? identity : session;
  auto [it, added] = identity_by_session_.try_emplace(name, identity);
  session_by_identity_[identity] = &it->first;
  if (added) return Bind::kNew;
  if (it->second == identity) return Bind::kSame;
  // The old identity no longer speaks for this session; if it talks again it
  // gets a session of its own.
  auto old = session_by_identity_.find(it->second);
  if (old != session_by_identity_.end() && old->second == &it->first) session_by_identity_.erase(old);
  it->second = identity;
  return Bind::kRebound;
}

const std::string* Sessions::find(const std::string& identity) const {
  auto it = session_by_identity_.find(identity);
  return it == session_by_identity_.end() ? nullptr : it->second;
}

const std::string* Sessions::identity_of(const std::string& session) const {
  auto it = identity_by_session_.find(session);
  return it == identity_by_session_.end() ? nullptr : &it->second;
}

std::vector<std::string> Sessions::identities() const {
  std::vector<std::string> r;
  r.reserve(identity_by_session_.size());
  for (const auto& [session, identity] : identity_by_session_) r.push_back(identity);
  std::sort(r.begin(), r.end());
  r.erase(std::unique(r.begin(), r.end()), r.end());
  return r;
}

std::string random_incarnation() {
  static constexpr char kHex[] = "0123456789abcdef";
  std::random_device rd;
  std::string s;
  for (int i = 0; i < 4; ++i) {
    std::uint32_t x = rd();
    for (int j = 0; j < 8; ++j, x >>= 4) s.push_back(kHex[x & 0xf]);
  }
  return s;
}

}  // namespace zfarm::broker
