#!/usr/bin/env python3
"""Instructions per call of each zfarm process, from callgrind.

    python tools/bench/callgrind_calls.py [--call execute] [--calls 1000,3000]
        [--engines 2] [--out DIR]

Runs the client, the broker and every engine under ``valgrind
--tool=callgrind``, makes ``--calls`` round trips of one kind (twice: with
the smaller and the larger count) and prints, per process, the difference
of the two runs' instruction totals divided by the difference of the
counts: the cost of one call without start-up, registration and warm-up.
Instruction counts do not depend on the machine's load, unlike times; what
still varies is the idle work that grows with wall time (heartbeats, the
receiver's wake-ups), kept small here with a long heartbeat interval.

Kinds of call: ``execute`` (``rc[:].execute("pass").get()``), ``apply``
(the load-balanced ``apply_async(int).get()``), ``dv-apply``
(``rc[:].apply_async(int).get()``), ``push`` (``rc[:].push({"a": 1})``),
``pull`` (``rc[:].pull("a")``).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile

HEARTBEAT_MS = 60000
WARMUP = 200
# The processes under valgrind run some 50 times slower: stopping them may
# take a while, and they must end by themselves to write their counts.
STOP_WAIT_S = 120


def _calls(kind: str, rc):
    lv = rc.load_balanced_view()
    dv = rc[:]
    dv.push({"a": 1}, block=True)
    return {
        "execute": lambda: dv.execute("pass").get(60),
        "apply": lambda: lv.apply_async(int).get(60),
        "dv-apply": lambda: dv.apply_async(int).get(60),
        "push": lambda: dv.push({"a": 1}).get(60),
        "pull": lambda: dv.pull("a").get(60),
    }[kind]


def drive(args) -> None:
    """The client: runs under callgrind itself (see main)."""
    import zfarm

    cluster = zfarm.Cluster(n=args.engines, heartbeat_ms=HEARTBEAT_MS)
    cluster.start()
    # Python starts slowly under valgrind: more time than the default.
    with cluster.connect(timeout=STOP_WAIT_S) as rc:
        call = _calls(args.call, rc)
        for _ in range(WARMUP):
            call()
        for _ in range(args.n):
            call()
        procs = [p for p in cluster.processes() if p.poll() is None]
        # Engines first, then the broker (as Cluster.stop does), each given
        # time to write its callgrind file.
        for p in sorted(procs, key=lambda p: "zfarm-broker" in str(p.args[0])):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    cluster.stop()


def _wrappers(bin_dir: str, out_dir: str, tag: str) -> None:
    from zfarm._cluster import find_binary

    for name in ("zfarm-broker", "zfarm-engine"):
        real = find_binary(name)
        path = os.path.join(bin_dir, name)
        role = name.split("-")[1]
        with open(path, "w") as f:
            f.write("#!/bin/sh\n"
                    f"exec valgrind -q --tool=callgrind --callgrind-out-file={out_dir}/{tag}.{role}.%p "
                    f'{real} "$@"\n')
        os.chmod(path, 0o755)


def _total(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise ValueError(f"{path}: no totals")


def measure(args, n: int, out_dir: str) -> dict:
    tag = f"n{n}"
    bin_dir = tempfile.mkdtemp(prefix="zfarm-cg-bin-")
    try:
        _wrappers(bin_dir, out_dir, tag)
        env = dict(os.environ, ZFARM_BIN_DIR=bin_dir)
        cmd = ["valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={out_dir}/{tag}.client.%p",
               sys.executable, __file__, "--drive", "--call", args.call, "--engines", str(args.engines),
               "--n", str(n)]
        subprocess.run(cmd, env=env, check=True, timeout=3600)
    finally:
        shutil.rmtree(bin_dir, ignore_errors=True)
    totals = {}
    for role in ("client", "broker", "engine"):
        files = sorted(glob.glob(f"{out_dir}/{tag}.{role}.*"))
        totals[role] = sum(_total(p) for p in files)
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--call", default="execute", choices=["execute", "apply", "dv-apply", "push", "pull"])
    ap.add_argument("--calls", default="1000,3000", help="the two counts, small,large")
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--out", default=None, help="keep the callgrind files here (default: a temporary folder)")
    ap.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drive:
        drive(args)
        return
    small, large = (int(x) for x in args.calls.split(","))
    out_dir = args.out or tempfile.mkdtemp(prefix="zfarm-cg-")
    os.makedirs(out_dir, exist_ok=True)
    try:
        a = measure(args, small, out_dir)
        b = measure(args, large, out_dir)
    finally:
        if args.out is None:
            shutil.rmtree(out_dir, ignore_errors=True)
    per = {role: (b[role] - a[role]) / (large - small) for role in a}
    engines = f" (both engines: {args.engines})" if args.engines != 1 else ""
    print(f"{args.call}: instructions per call: " + "  ".join(f"{k} {v:,.0f}" for k, v in per.items())
          + f"  total {sum(per.values()):,.0f}{engines}")


if __name__ == "__main__":
    main()
