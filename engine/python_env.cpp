#include "python_env.hpp"

#include <Python.h>
#include <csignal>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

namespace zfarm::engine {

namespace {

std::string dirname_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return {};
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

bool is_executable_file(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

std::string python_in(const std::string& dir) {
  if (dir.empty()) return {};
  for (const char* name : {"python3", "python"}) {
    std::string candidate = dir + "/" + name;
    // stat follows a venv's symlink to the base interpreter, which must exist;
    // the path handed to CPython stays the unresolved one inside the venv.
    if (is_executable_file(candidate)) return candidate;
  }
  return {};
}

}  // namespace

std::string find_sibling_python(const char* argv0) {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) {
    buf[n] = '\0';
    if (std::string found = python_in(dirname_of(buf)); !found.empty()) return found;
  }
  // Started through a symlink (say, bin/zfarm-engine -> a build tree):
  // /proc/self/exe is resolved, but the directory named by argv0 is not.
  if (argv0 != nullptr) {
    std::string dir = dirname_of(argv0);
    if (!dir.empty() && dir[0] != '/') {
      if (char cwd[PATH_MAX]; ::getcwd(cwd, sizeof cwd) != nullptr) dir = std::string(cwd) + "/" + dir;
    }
    if (std::string found = python_in(dir); !found.empty()) return found;
  }
  return {};
}

bool start_python(const std::string& program, const char* argv0, std::string* why) {
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  // The engine's own options are not Python's.
  config.parse_argv = 0;
  // SIGINT becomes KeyboardInterrupt inside a task, as in an interactive
  // interpreter.  Python installs its handler only over the default
  // disposition, and an engine started in the background by a shell script
  // (`nohup zfarm-engine ... &`, as the ssh launcher does) inherits SIGINT
  // ignored: then interrupts would silently do nothing.
  std::signal(SIGINT, SIG_DFL);
  config.install_signal_handlers = 1;
  PyStatus status = PyStatus_Ok();
  if (!program.empty()) {
    status = PyConfig_SetBytesString(&config, &config.program_name, program.c_str());
  }
  if (!PyStatus_Exception(status)) {
    char* args[] = {const_cast<char*>(argv0 != nullptr ? argv0 : "zfarm-engine")};
    status = PyConfig_SetBytesArgv(&config, 1, args);
  }
  if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    *why = status.err_msg != nullptr ? status.err_msg : "Python initialisation failed";
    if (status.func != nullptr) *why = std::string(status.func) + ": " + *why;
    return false;
  }
  return true;
}

bool stop_python() { return Py_FinalizeEx() == 0; }

}  // namespace zfarm::engine
