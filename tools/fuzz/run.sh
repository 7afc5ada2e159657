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
# source but main.cpp and the units, so new files are picked up.
BROKER_SRCS=$(ls broker/*.cpp | grep -v -e '/main\.cpp$' -e '_test\.cpp$')
COMMON_SRCS=$(ls common/*.cpp | grep -v -e '_test\.cpp$')
FLAGS=(-std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -DMSGPACK_NO_BOOST -Icommon -Ibroker -Itools/fuzz)
LIBS=($(pkg-config --cflags --libs libzmq) -pthread)

build() {  # name, sources...
  local name=$1
  shift
  echo "fuzz: building $name"
  # shellcheck disable=SC2068
  "$CXX" "${FLAGS[@]}" "$@" ${LIBS[@]} -o "$OUT/$name"
}
# shellcheck disable=SC2086
build fuzz_codec tools/fuzz/fuzz_codec.cpp $COMMON_SRCS
# shellcheck disable=SC2086
build fuzz_scheduler tools/fuzz/fuzz_scheduler.cpp $BROKER_SRCS $COMMON_SRCS

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
