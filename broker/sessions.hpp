// Sessions: which client identity speaks for which session now.
//
// A session is a name the client chooses (Hello opts.session) and keeps when
// it reconnects with a new socket, hence a new ROUTER identity.  Tasks belong
// to a session; their results go to the session's current identity.  A
// client that never sent Hello gets an implicit session named after its
// identity, so a plain Submit works as it always did.
//
// Sessions are not forgotten while the broker runs (a few dozen bytes each).
// No sockets; not thread-safe.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace zfarm::broker {

class Sessions {
 public:
  // Longest session name accepted.  Names are kept for the broker's life;
  // clients make 32-character random ones.
  static constexpr std::size_t kMaxName = 256;

  // The session `identity` speaks for; made (implicit, named after the
  // identity) if the identity never said Hello.  The name is interned: the
  // same session always gives the same reference, valid for the life of
  // Sessions, so the Scheduler keeps a pointer per task instead of a copy
  // and compares sessions by address.
  const std::string& session_of(const std::string& identity);

  enum class Bind {
    kNew,      // a session not seen before
    kSame,     // already bound to this identity (a repeated Hello)
    kRebound,  // known, bound to another identity until now
  };
  // Binds `session` to `identity` (Hello).  An empty session name means the
  // identity's implicit session.
  Bind bind(const std::string& session, const std::string& identity);

  // The session `identity` speaks for (interned, as session_of), or nullptr
  // if it has none yet.
  const std::string* find(const std::string& identity) const;

  // The identity results of `session` go to, or nullptr if it is unknown.
  const std::string* identity_of(const std::string& session) const;

  // The current identity of every session, each once, sorted.
  std::vector<std::string> identities() const;

  std::size_t size() const { return identity_by_session_.size(); }

 private:
  // By session name; its keys are the interned names (map nodes never move
  // and are never erased).
  std::map<std::string, std::string> identity_by_session_;
  std::unordered_map<std::string, const std::string*> session_by_identity_;
};

// 32 random hex digits: names one run of the broker (Welcome text), so a
// client can tell a restarted broker from the one it knew.
std::string random_incarnation();

}  // namespace zfarm::broker
