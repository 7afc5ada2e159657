// Engine logging: one line per event on stderr, prefixed with the process
// id so the lines of several engines sharing a terminal can be told apart.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>

namespace zfarm::engine {

inline std::atomic<bool> g_quiet{false};

inline void vlog(const char* fmt, va_list ap) {
  char line[2048];
  std::vsnprintf(line, sizeof line, fmt, ap);
  std::fprintf(stderr, "zfarm-engine[%ld]: %s\n", static_cast<long>(::getpid()), line);
}

// Progress (registration, shutdown); silenced by --quiet.
[[gnu::format(printf, 1, 2)]] inline void log_info(const char* fmt, ...) {
  if (g_quiet) return;
  va_list ap;
  va_start(ap, fmt);
  vlog(fmt, ap);
  va_end(ap);
}

// Something is wrong; always printed.
[[gnu::format(printf, 1, 2)]] inline void log_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(fmt, ap);
  va_end(ap);
}

}  // namespace zfarm::engine
