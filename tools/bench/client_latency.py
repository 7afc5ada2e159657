#!/usr/bin/env python3
"""zfarm's own latency and throughput, quickly, without the peers.

    python tools/bench/client_latency.py [--engines 2] [--reps 2000] [--tasks 20000]
        [--items 100000] [--runs 3] [--broker-args ARGS] [--pin auto|on|off]
        [--profile apply|async]

Prints, per run, the median and p99 of a load-balanced apply+get round trip
and of execute on all engines, async no-op tasks per second (submitted one
by one, then gathered) and map items per second; then the median over runs,
with the load average beside it (the machine may be shared).  --profile
runs one part under cProfile and prints the top functions of the client.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shlex
import statistics
import time


def _p50_p99(samples):
    s = sorted(samples)
    return statistics.median(s) * 1e3, s[min(len(s) - 1, int(0.99 * len(s)))] * 1e3


def one_run(rc, args):
    lv = rc.load_balanced_view()
    dv = rc[:]
    for _ in range(50):
        lv.apply_async(int).get(60)
        dv.execute("pass").get(60)
    samples = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        lv.apply_async(int).get(60)
        samples.append(time.perf_counter() - t0)
    apply = _p50_p99(samples)
    samples = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        dv.execute("pass").get(60)
        samples.append(time.perf_counter() - t0)
    execute = _p50_p99(samples)
    t0 = time.perf_counter()
    ars = [lv.apply_async(int) for _ in range(args.tasks)]
    for ar in ars:
        ar.get(300)
    async_rate = args.tasks / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    lv.map(abs, range(args.items)).get(300)
    map_rate = args.items / (time.perf_counter() - t0)
    return {"apply_p50_ms": apply[0], "apply_p99_ms": apply[1], "all_p50_ms": execute[0],
            "all_p99_ms": execute[1], "async_tasks_per_s": async_rate, "map_items_per_s": map_rate}


def profile(rc, args):
    lv = rc.load_balanced_view()
    for _ in range(50):
        lv.apply_async(int).get(60)
    prof = cProfile.Profile()
    if args.profile == "apply":
        prof.enable()
        for _ in range(args.reps):
            lv.apply_async(int).get(60)
        prof.disable()
    else:
        prof.enable()
        ars = [lv.apply_async(int) for _ in range(args.tasks)]
        for ar in ars:
            ar.get(300)
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--items", type=int, default=100000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--broker-args", default="", help="extra zfarm-broker arguments")
    ap.add_argument("--engine-args", default="", help="extra zfarm-engine arguments")
    ap.add_argument("--pin", choices=["auto", "on", "off"], default="auto",
                    help="Cluster(pin=...): bind broker and engines to CPUs (default auto)")
    ap.add_argument("--profile", choices=["apply", "async"], default=None)
    args = ap.parse_args()

    import zfarm

    with zfarm.Cluster(n=args.engines, broker_args=shlex.split(args.broker_args),
                       engine_args=shlex.split(args.engine_args),
                       pin={"auto": "auto", "on": True, "off": False}[args.pin]) as rc:
        if args.profile:
            profile(rc, args)
            return
        runs = []
        for i in range(args.runs):
            r = one_run(rc, args)
            runs.append(r)
            print(f"run {i + 1}: " + "  ".join(f"{k}={v:.4g}" for k, v in r.items())
                  + f"  load={os.getloadavg()[0]:.2f}", flush=True)
        print("median: " + "  ".join(f"{k}={statistics.median(r[k] for r in runs):.4g}" for k in runs[0])
              + f"  load={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
