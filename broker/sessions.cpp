#include "sessions.hpp"

#include <algorithm>
#include <cstdint>
#include <random>

namespace zfarm::broker {

void Sessions::heard_from(const std::string& identity, Clock::time_point now) {
  if (now > latest_) latest_ = now;
  // Messages come in runs from one client (a stream of Submits): the last
  // peer is compared before the identity is hashed.
  if (last_ == nullptr || last_->first != identity) last_ = &*peers_.try_emplace(identity).first;
  Peer& p = last_->second;
  p.last_seen = now;
  if (p.session != nullptr) p.session->last_seen = now;
}

Sessions::Peer& Sessions::peer(const std::string& identity) {
  auto [it, added] = peers_.try_emplace(identity);
  if (added) it->second.last_seen = latest_;
  return it->second;
}

const std::string& Sessions::session_of(const std::string& identity) {
  auto it = peers_.find(identity);
  if (it != peers_.end() && it->second.name != nullptr) return *it->second.name;
  bind(identity, identity);
  return *peers_.at(identity).name;
}

Sessions::Bind Sessions::bind(const std::string& session, const std::string& identity, std::int64_t revision) {
  const std::string& name = session.empty() ? identity : session;
  Peer& p = peer(identity);
  auto [it, added] = by_name_.try_emplace(name, Session{identity, p.last_seen});
  p.session = &it->second;
  p.name = &it->first;
  it->second.revision = revision;
  if (added) return Bind::kNew;
  if (it->second.identity == identity) return Bind::kSame;
  // The old identity no longer speaks for this session; if it talks again it
  // gets a session of its own.
  auto old = peers_.find(it->second.identity);
  if (old != peers_.end() && old->second.session == &it->second) {
    old->second.session = nullptr;
    old->second.name = nullptr;
  }
  it->second.identity = identity;
  it->second.last_seen = p.last_seen;
  return Bind::kRebound;
}

const std::string* Sessions::find(const std::string& identity) const {
  auto it = peers_.find(identity);
  return it == peers_.end() ? nullptr : it->second.name;
}

const std::string* Sessions::identity_of(const std::string& session, std::int64_t* revision) const {
  // The interned name itself is compared by address first.
  if (last_session_ == nullptr || (&last_session_->first != &session && last_session_->first != session)) {
    auto it = by_name_.find(session);
    if (it == by_name_.end()) return nullptr;
    last_session_ = &*it;
  }
  if (revision != nullptr) *revision = last_session_->second.revision;
  return &last_session_->second.identity;
}

std::vector<std::string> Sessions::identities() const {
  std::vector<std::string> r;
  r.reserve(by_name_.size());
  for (const auto& [name, s] : by_name_) r.push_back(s.identity);
  std::sort(r.begin(), r.end());
  r.erase(std::unique(r.begin(), r.end()), r.end());
  return r;
}

std::vector<const std::string*> Sessions::idle(Clock::time_point now, Clock::duration timeout) const {
  std::vector<const std::string*> r;
  for (const auto& [name, s] : by_name_) {
    if (now - s.last_seen >= timeout) r.push_back(&name);
  }
  return r;
}

void Sessions::forget(const std::string* name) {
  auto it = by_name_.find(*name);
  if (it == by_name_.end() || &it->first != name) return;
  auto p = peers_.find(it->second.identity);
  if (p != peers_.end() && p->second.session == &it->second) {
    p->second.session = nullptr;
    p->second.name = nullptr;
  }
  if (last_session_ == &*it) last_session_ = nullptr;
  by_name_.erase(it);
}

std::size_t Sessions::forget_idle_peers(Clock::time_point now, Clock::duration timeout) {
  last_ = nullptr;
  return std::erase_if(peers_, [&](const auto& kv) {
    return kv.second.session == nullptr && now - kv.second.last_seen >= timeout;
  });
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
