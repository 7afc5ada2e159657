#!/usr/bin/env python3
"""Round trips of one cluster with and without CPU pinning, interleaved.

    python tools/bench/pinning.py [--rounds 20] [--reps 200]

Starts one unpinned 2-engine Cluster and, round after round, moves its
processes between placements: "free" (every usable CPU) and "pinned" (what
``Cluster(pin=True)`` does: the broker on the last usable CPU, engine i on
the i-th, every thread of each).  In each round each placement gets
``--reps`` load-balanced ``apply_async(int).get()`` and as many
``rc[:].execute("pass").get()``; the medians are over all rounds.  Short
interleaved rounds compare the placements under the same machine noise,
which separate runs minutes apart do not (docs/benchmarks.rst).
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import time

import zfarm
from zfarm._cluster import placement, usable_cpus


def move(pid: int, cpus) -> None:
    """Sets the CPU set of every thread of a process."""
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            os.sched_setaffinity(int(os.path.basename(task)), cpus)
        except OSError:  # the thread ended meanwhile
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    cpus = usable_cpus()
    if len(cpus) < 2:
        raise SystemExit("pinning needs two usable CPUs")
    broker_cpu, engine_cpus = placement(2, True, cpus)
    samples = {p: {"apply": [], "execute": []} for p in ("free", "pinned")}
    cluster = zfarm.Cluster(n=2, pin=False)
    with cluster as rc:
        lv, dv = rc.load_balanced_view(), rc[:]
        for _ in range(args.rounds):
            for name in samples:
                pinned = name == "pinned"
                move(cluster.broker.pid, {broker_cpu} if pinned else set(cpus))
                for proc, cpu in zip(cluster.engines, engine_cpus):
                    move(proc.pid, {cpu} if pinned else set(cpus))
                for _ in range(20):  # settle after the move
                    lv.apply_async(int).get(60)
                    dv.execute("pass").get(60)
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    lv.apply_async(int).get(60)
                    samples[name]["apply"].append(time.perf_counter() - t0)
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    dv.execute("pass").get(60)
                    samples[name]["execute"].append(time.perf_counter() - t0)
    print(f"{args.rounds} interleaved rounds of {args.reps} calls each, load {os.getloadavg()[0]:.2f}")
    for name, s in samples.items():
        print(f"{name:7s} apply+get median {statistics.median(s['apply']) * 1e6:6.1f} us   "
              f"execute on all median {statistics.median(s['execute']) * 1e6:6.1f} us")


if __name__ == "__main__":
    main()
