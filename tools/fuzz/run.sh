#!/usr/bin/env bash
# Builds the libFuzzer targets with clang++ straight from the sources (the
# meson build is untouched; a small build.ninja in build-fuzz/) and runs each for a bounded time from the seed
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
ROOT=$(pwd)
BROKER_SRCS=$(ls broker/*.cpp | grep -v -e '/main\.cpp$' -e '_test\.cpp$')
COMMON_SRCS=$(ls common/*.cpp | grep -v -e '_test\.cpp$')
SAN=(-fsanitize=address,undefined -fno-sanitize-recover=undefined)
FLAGS=(-std=c++20 -g -O1 "${SAN[@]}" -DMSGPACK_NO_BOOST -I"$ROOT/common" -I"$ROOT/broker"
       -I"$ROOT/tools/fuzz" $(pkg-config --cflags libzmq))
LIBS=($(pkg-config --libs libzmq) -pthread)
# ninja (tools/setup.sh puts it in .venv) compiles two sources at a time and,
# from the compiler's dependency files, only what changed since the last run.
NINJA=$ROOT/.venv/bin/ninja
[ -x "$NINJA" ] || NINJA=ninja
if ! command -v "$NINJA" >/dev/null; then
  echo "fuzz: ninja not found (tools/setup.sh installs it into .venv)" >&2
  exit 1
fi

path() {  # a path in a build line: ninja escapes $, blanks and colons with $
  local p=${1//\$/\$\$}
  p=${p// /\$ }
  printf '%s' "${p//:/\$:}"
}
words() {  # words for a command: quoted for the shell, $ escaped for ninja
  local q
  q=$(printf '%q ' "$@")
  printf '%s' "${q//\$/\$\$}"
}
archive() {  # name, sources...: the build lines of one archive
  local name=$1 objs=() src obj
  shift
  for src in "$@"; do
    obj="obj-$name/$(basename "${src%.cpp}").o"
    echo "build $obj: cc $(path "$ROOT/$src")"
    objs+=("$obj")
  done
  echo "build lib$name.a: ar ${objs[*]}"
}
{
  echo "cxx = $(words "$CXX")"
  echo "flags = $(words "${FLAGS[@]}")"
  echo "libs = $(words "${LIBS[@]}")"
  echo "rule cc"
  echo "  command = \$cxx \$flags -fsanitize=fuzzer-no-link -MD -MF \$out.d -c \$in -o \$out"
  echo "  depfile = \$out.d"
  echo "  deps = gcc"
  echo "rule ar"
  echo "  command = rm -f \$out && ar rcs \$out \$in"
  echo "rule link"
  echo "  command = \$cxx \$flags -fsanitize=fuzzer -MD -MF \$out.d \$in \$libs -o \$out"
  echo "  depfile = \$out.d"
  echo "  deps = gcc"
  # shellcheck disable=SC2086
  archive common $COMMON_SRCS
  # shellcheck disable=SC2086
  archive broker $BROKER_SRCS
  echo "build fuzz_codec: link $(path "$ROOT/tools/fuzz/fuzz_codec.cpp") libcommon.a"
  echo "build fuzz_scheduler: link $(path "$ROOT/tools/fuzz/fuzz_scheduler.cpp") libbroker.a libcommon.a"
} >"$OUT/build.ninja.new"
mv "$OUT/build.ninja.new" "$OUT/build.ninja"
echo "fuzz: building fuzz_codec and fuzz_scheduler"
"$NINJA" -C "$OUT" -j 2 --quiet fuzz_codec fuzz_scheduler

# Both targets run at once, one core each (libFuzzer runs one process per
# target here); each still gets its full time.
fuzz() {  # target
  local target=$1 work="$OUT/corpus-$1"  # new inputs go here, not into the committed seeds
  mkdir -p "$work"
  ASAN_OPTIONS=detect_leaks=1 "$OUT/fuzz_$target" "$work" "tools/fuzz/corpus/$target" \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -artifact_prefix="$OUT/$target-" -print_final_stats=1 >"$OUT/$target.log" 2>&1
}
TARGETS=(codec scheduler)
pids=()
for target in "${TARGETS[@]}"; do
  echo "fuzz: running fuzz_$target for ${SECONDS_PER_TARGET}s"
  fuzz "$target" &
  pids+=($!)
done
status=0
for i in "${!TARGETS[@]}"; do
  target=${TARGETS[$i]}
  if ! wait "${pids[$i]}"; then
    echo "fuzz: fuzz_$target FAILED; log: $OUT/$target.log" >&2
    tail -40 "$OUT/$target.log" >&2
    status=1
  else
    echo "fuzz_$target: $(grep -E 'stat::number_of_executed_units|Done [0-9]+ runs' "$OUT/$target.log" | tail -1)"
  fi
done
exit $status
