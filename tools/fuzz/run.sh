#!/usr/bin/env bash
# Builds the libFuzzer targets with clang++ straight from the sources (the
# meson build is untouched) and runs each for a bounded time from the seed
# corpus in tools/fuzz/corpus/.  Exits non-zero if a target crashes or
# breaks an invariant; the input that did it is left in build-fuzz/.
#
#   tools/fuzz/run.sh [SECONDS]      (default 15 per target)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_TARGET=${1:-${ZFARM_FUZZ_SECONDS:-15}}
OUT=build-fuzz
CXX=${FUZZ_CXX:-clang++}
if ! command -v "$CXX" >/dev/null; then
  echo "fuzz: $CXX not found (tools/setup.sh installs clang)" >&2
  exit 1
fi
mkdir -p "$OUT"

# The Scheduler and whatever the broker splits out of it: every broker
# source but main.cpp and the units, so new files are picked up.  They go
# into archives, so the linker takes only the objects a target needs.
BROKER_SRCS=$(ls broker/*.cpp | grep -v -e '/main\.cpp$' -e '_test\.cpp$')
COMMON_SRCS=$(ls common/*.cpp | grep -v -e '_test\.cpp$')
SAN=(-fsanitize=address,undefined -fno-sanitize-recover=undefined)
FLAGS=(-std=c++20 -g -O1 "${SAN[@]}" -DMSGPACK_NO_BOOST -Icommon -Ibroker -Itools/fuzz
       $(pkg-config --cflags libzmq))
LIBS=($(pkg-config --libs libzmq) -pthread)

archive() {  # name, sources...
  local name=$1 objs=() src obj
  shift
  mkdir -p "$OUT/obj-$name"
  for src in "$@"; do
    obj="$OUT/obj-$name/$(basename "${src%.cpp}").o"
    "$CXX" "${FLAGS[@]}" -fsanitize=fuzzer-no-link -c "$src" -o "$obj"
    objs+=("$obj")
  done
  rm -f "$OUT/lib$name.a"
  ar rcs "$OUT/lib$name.a" "${objs[@]}"
}
target() {  # name, archives...
  local name=$1
  shift
  echo "fuzz: building $name"
  "$CXX" "${FLAGS[@]}" -fsanitize=fuzzer "tools/fuzz/$name.cpp" "$@" "${LIBS[@]}" -o "$OUT/$name"
}
echo "fuzz: compiling the sources"
# shellcheck disable=SC2086
archive common $COMMON_SRCS
# shellcheck disable=SC2086
archive broker $BROKER_SRCS
target fuzz_codec "$OUT/libcommon.a"
target fuzz_scheduler "$OUT/libbroker.a" "$OUT/libcommon.a"

status=0
for target in codec scheduler; do
  work="$OUT/corpus-$target"  # new inputs go here, not into the committed seeds
  mkdir -p "$work"
  echo "fuzz: running fuzz_$target for ${SECONDS_PER_TARGET}s"
  if ! ASAN_OPTIONS=detect_leaks=1 "$OUT/fuzz_$target" "$work" "tools/fuzz/corpus/$target" \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
      -artifact_prefix="$OUT/$target-" -print_final_stats=1 >"$OUT/$target.log" 2>&1; then
    echo "fuzz: fuzz_$target FAILED; log: $OUT/$target.log" >&2
    tail -40 "$OUT/$target.log" >&2
    status=1
  else
    grep -E 'stat::number_of_executed_units|Done [0-9]+ runs' "$OUT/$target.log" | tail -1 || true
  fi
done
exit $status
