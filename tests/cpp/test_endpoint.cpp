// Which endpoints the broker binds without --allow-insecure, and the
// connection file it writes.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "endpoint.hpp"

using zfarm::broker::is_local_endpoint;

namespace {

bool local(const char* endpoint) {
  std::string why;
  const bool ok = is_local_endpoint(endpoint, &why);
  if (!ok) CHECK_FALSE(why.empty());
  return ok;
}

}  // namespace

TEST_CASE("loopback tcp, ipc and inproc endpoints are local") {
  CHECK(local("tcp://127.0.0.1:*"));
  CHECK(local("tcp://127.0.0.1:5555"));
  CHECK(local("tcp://127.1.2.3:5555"));
  CHECK(local("tcp://localhost:*"));
  CHECK(local("tcp://[::1]:5555"));
  CHECK(local("ipc:///tmp/zfarm.sock"));
  CHECK(local("inproc://broker"));
}

TEST_CASE("other tcp endpoints are refused") {
  CHECK_FALSE(local("tcp://0.0.0.0:5555"));
  CHECK_FALSE(local("tcp://*:5555"));
  CHECK_FALSE(local("tcp://192.168.1.5:5555"));
  CHECK_FALSE(local("tcp://eth0:5555"));
  CHECK_FALSE(local("tcp://[::]:5555"));
  CHECK_FALSE(local("tcp://127.0.0.1.evil.com:5555"));
  CHECK_FALSE(local("tcp://127.0.0:5555"));
  CHECK_FALSE(local("tcp://localhost.evil.com:5555"));
  CHECK_FALSE(local("tcp://127.0.0.1"));   // no port
  CHECK_FALSE(local("tcp://[::1"));        // unterminated
  CHECK_FALSE(local("udp://127.0.0.1:5555"));
  CHECK_FALSE(local("pgm://eth0;239.192.1.1:5555"));
}

TEST_CASE("connection file is JSON with mode 0600") {
  char dir[] = "/tmp/zfarm-test-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  const std::string path = std::string(dir) + "/connection.json";
  zfarm::broker::ConnectionInfo info;
  info.client = "tcp://127.0.0.1:1000";
  info.engine = "tcp://127.0.0.1:2000";
  info.pid = 42;
  const std::string err = zfarm::broker::write_connection_file(path, info);
  CHECK(err.empty());
  std::ifstream in(path);
  std::stringstream body;
  body << in.rdbuf();
  CHECK(body.str() ==
        "{\"version\": 1, \"client\": \"tcp://127.0.0.1:1000\", \"engine\": \"tcp://127.0.0.1:2000\", \"pid\": 42, "
        "\"max_message_bytes\": -1}\n");
  struct stat sb {};
  REQUIRE(stat(path.c_str(), &sb) == 0);
  CHECK((sb.st_mode & 0777) == 0600);
  ::unlink(path.c_str());
  ::rmdir(dir);
}

TEST_CASE("connection file in a missing directory is an error, not a crash") {
  zfarm::broker::ConnectionInfo info;
  info.client = "a";
  info.engine = "b";
  const std::string err = zfarm::broker::write_connection_file("/nonexistent-zfarm-dir/c.json", info);
  CHECK_FALSE(err.empty());
}
