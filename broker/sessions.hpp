// Sessions: which client identity speaks for which session now, and when
// each was last heard from.
//
// A session is a name the client chooses (Hello opts.session) and keeps when
// it reconnects with a new socket, hence a new ROUTER identity.  Tasks belong
// to a session; their results go to the session's current identity.  A
// client that never sent Hello gets an implicit session named after its
// identity, so a plain Submit works as it always did.
//
// Every identity that sends anything is a *peer*, with the time of its last
// message; a session is as fresh as the peer that speaks for it.  The owner
// (the Scheduler) forgets a session that has been silent too long once
// nothing of it is pending (idle(), forget()), and peers that speak for no
// session once they are silent too long (forget_idle_peers()), so a broker
// that runs for weeks does not keep every client that ever connected.
//
// No sockets; not thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace zfarm::broker {

class Sessions {
 public:
  using Clock = std::chrono::steady_clock;

  // Longest session name accepted.  Clients make 32-character random ones.
  static constexpr std::size_t kMaxName = 256;

  // A message from `identity` at `now` (every client message, valid or
  // not): the identity becomes a known peer, and it and its session are
  // fresh.  One hash lookup.
  void heard_from(const std::string& identity, Clock::time_point now);

  // The session `identity` speaks for; made (implicit, named after the
  // identity) if it has none.  The name is interned: the same session always
  // gives the same reference, valid until the session is forgotten, so the
  // Scheduler keeps a pointer per task instead of a copy and compares
  // sessions by address.  (A forgotten session's address may be reused by a
  // later one: only pointers the owner no longer holds are ever freed.)
  const std::string& session_of(const std::string& identity);

  enum class Bind {
    kNew,      // a session not known (never seen, or forgotten)
    kSame,     // already bound to this identity (a repeated Hello)
    kRebound,  // known, bound to another identity until now
  };
  // Binds `session` to `identity` (Hello).  An empty session name means the
  // identity's implicit session.  `revision`: the one the Hello named
  // (protocol.hpp, kRevision); the session's identity speaks it from now on.
  Bind bind(const std::string& session, const std::string& identity, std::int64_t revision = 0);

  // The session `identity` speaks for (interned, as session_of), or nullptr
  // if it has none.
  const std::string* find(const std::string& identity) const;

  // The identity results of `session` go to, or nullptr if it is unknown;
  // with `revision`, also the revision that identity named in its Hello (0
  // for an implicit session).
  const std::string* identity_of(const std::string& session, std::int64_t* revision = nullptr) const;

  // The current identity of every session, each once, sorted.
  std::vector<std::string> identities() const;

  std::size_t size() const { return by_name_.size(); }
  // Identities known: heard from and not forgotten.
  std::size_t peers() const { return peers_.size(); }

  // Sessions silent for at least `timeout` at `now` (interned names): the
  // candidates for forget().
  std::vector<const std::string*> idle(Clock::time_point now, Clock::duration timeout) const;
  // Forgets a session named by idle() (its name is invalid afterwards).  Its
  // identity stays a peer until forget_idle_peers() finds it silent.
  void forget(const std::string* name);
  // Forgets peers that speak for no session and were silent for at least
  // `timeout`; returns how many.
  std::size_t forget_idle_peers(Clock::time_point now, Clock::duration timeout);

 private:
  struct Session {
    std::string identity;        // where its results go
    Clock::time_point last_seen;  // its identity's last message
    std::int64_t revision = 0;    // the one its identity's Hello named
  };
  struct Peer {
    Clock::time_point last_seen;
    // The session it speaks for (a node of by_name_), or nullptr.
    Session* session = nullptr;
    const std::string* name = nullptr;
  };

  Peer& peer(const std::string& identity);

  // By session name; its keys are the interned names (map nodes never move).
  std::map<std::string, Session> by_name_;
  std::unordered_map<std::string, Peer> peers_;
  // The peer heard_from() found last (nodes stay put until erased).
  std::unordered_map<std::string, Peer>::value_type* last_ = nullptr;
  // The session identity_of() found last: the Results of a Batch mostly go
  // to one client.  Cleared when a session is forgotten.
  mutable const std::map<std::string, Session>::value_type* last_session_ = nullptr;
  // The latest time heard_from() was told: a peer made without a message
  // (a test binding directly) counts as heard from then.
  Clock::time_point latest_{};
};

// 32 random hex digits: names one run of the broker (Welcome text), so a
// client can tell a restarted broker from the one it knew.
std::string random_incarnation();

}  // namespace zfarm::broker
