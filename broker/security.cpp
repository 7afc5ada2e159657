#include "security.hpp"

#include <unistd.h>

#include "endpoint.hpp"

namespace zfarm::broker {

std::string plan_security(const SecurityOptions& options, std::string* client_endpoint,
                          std::string* engine_endpoint, SecurityPlan* plan) {
  plan->curve = options.curve;

  ConnectionInfo previous;
  bool have_previous = false;
  if (options.reuse) {
    if (options.connection_file.empty()) return "--reuse needs --connection-file (the file to reuse)";
    if (::access(options.connection_file.c_str(), F_OK) != 0) {
      plan->messages.push_back("no " + options.connection_file + " to reuse yet: starting with new endpoints" +
                               std::string(options.curve ? " and keys" : ""));
    } else {
      std::string err = read_connection_file(options.connection_file, &previous);
      if (!err.empty()) return "cannot reuse " + err;
      have_previous = true;
      if (!options.client_endpoint_given) *client_endpoint = previous.client;
      if (!options.engine_endpoint_given) *engine_endpoint = previous.engine;
      // Keys once handed out stay in force: engines and clients hold them.
      if (previous.curve) plan->curve = true;
    }
  }

  std::vector<std::string> exposed;  // non-loopback endpoints, with the reason
  for (const std::string* ep : {client_endpoint, engine_endpoint}) {
    std::string why;
    if (!is_local_endpoint(*ep, &why)) exposed.push_back(*ep + ": " + why);
  }
  if (!exposed.empty() && !plan->curve) {
    if (options.allow_insecure) {
      for (const auto& e : exposed) {
        plan->messages.push_back("WARNING: --allow-insecure: binding " + e +
                                 ". There is NO authentication and NO encryption: anyone who can reach "
                                 "this address can run any code on the engines and read every task.");
      }
    } else {
      plan->curve = true;
      plan->messages.push_back("binding an address other than loopback: CURVE is on (" + exposed.front() + ")");
    }
  }
  if (!plan->curve) {
    if (!options.authorized_keys.empty()) return "--authorized-keys needs CURVE: add --curve";
    return {};
  }

  if (options.connection_file.empty()) {
    return "CURVE needs --connection-file: the keys clients and engines need are written only there" +
           std::string(exposed.empty() ? "" : " (an address other than loopback turns CURVE on; "
                                              "--allow-insecure binds it without any authentication)");
  }
  if (have_previous && previous.curve) {
    plan->keys = previous.keys;
    plan->messages.push_back("reusing the CURVE keys of " + options.connection_file);
  } else {
    std::string err = generate_curve_keys(&plan->keys);
    if (!err.empty()) return err;
  }
  if (!add_cluster_keys(plan->keys, &plan->ring)) return "the CURVE keys are not valid Z85 keys";
  if (!options.authorized_keys.empty()) {
    std::string err = read_authorized_keys(options.authorized_keys, &plan->ring);
    if (!err.empty()) return "--authorized-keys: " + err;
  }
  return {};
}

void make_curve_server(zmq::socket_t& socket, const SecurityPlan& plan, const char* domain) {
  socket.set(zmq::sockopt::zap_domain, domain);
  socket.set(zmq::sockopt::curve_server, 1);
  socket.set(zmq::sockopt::curve_secretkey, plan.keys.server.secret_key);
}

}  // namespace zfarm::broker
