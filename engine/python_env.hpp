// Starting the embedded interpreter in the Python environment the engine
// was installed into.
//
// `pip install .` puts zfarm-engine in the same bin/ directory as the
// environment's python3.  Naming that python3 as the interpreter's program
// lets CPython's path calculation find the environment exactly as if python3
// itself had been started: a virtualenv's pyvenv.cfg, its site-packages, and
// the base installation behind it.  PYTHONPATH, PYTHONHOME and the other
// PYTHON* variables are honoured as usual.
#pragma once

#include <string>

namespace zfarm::engine {

// The python3 (or python) beside this executable (as /proc/self/exe, then
// as argv0 names it), or "" if there is none.
std::string find_sibling_python(const char* argv0);

// Initialises CPython.  `program` is the interpreter to impersonate (may be
// empty: CPython then locates its installation from libpython).  `argv0`
// becomes sys.argv[0].  On failure returns false with a reason in *why.
// On success the calling thread holds the GIL.
bool start_python(const std::string& program, const char* argv0, std::string* why);

// Finalises CPython; returns false if finalisation reported an error.
bool stop_python();

}  // namespace zfarm::engine
