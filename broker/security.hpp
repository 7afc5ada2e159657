// The broker's start-up decisions about security, kept out of main.cpp and
// free of sockets so doctest can check them: is CURVE on, which keys, which
// endpoints (--reuse), who is admitted.  docs/security.rst is the prose.
//
//   loopback/ipc endpoints, no flags   plain text (only this machine connects)
//   --curve                            CURVE + ZAP
//   any other address                  CURVE + ZAP, turned on by itself
//   other address + --allow-insecure   plain text, with a loud warning
//
// CURVE needs --connection-file: the keys are handed out only through it.
#pragma once

#include <string>
#include <vector>

#include <zmq.hpp>

#include "curve.hpp"

namespace zfarm::broker {

struct SecurityOptions {
  bool curve = false;           // --curve
  bool allow_insecure = false;  // --allow-insecure
  bool reuse = false;           // --reuse
  std::string authorized_keys;  // --authorized-keys FILE
  std::string connection_file;  // --connection-file
  // Whether --client-endpoint / --engine-endpoint were given: explicit
  // endpoints win over the ones --reuse reads.
  bool client_endpoint_given = false;
  bool engine_endpoint_given = false;
};

struct SecurityPlan {
  bool curve = false;
  CurveKeys keys;  // when curve
  KeyRing ring;    // when curve: who the ZAP handler admits
  // Lines for stderr (warnings and notes), in order.
  std::vector<std::string> messages;
};

// Decides everything above.  May replace *client_endpoint and
// *engine_endpoint (--reuse).  Returns an empty string on success, else why
// the broker must not start (exit code 2).
std::string plan_security(const SecurityOptions& options, std::string* client_endpoint,
                          std::string* engine_endpoint, SecurityPlan* plan);

// Makes `socket` a CURVE server with the plan's server key, asking the ZAP
// handler with `domain` (kClientDomain or kEngineDomain).  Before bind.
void make_curve_server(zmq::socket_t& socket, const SecurityPlan& plan, const char* domain);

}  // namespace zfarm::broker
