#!/usr/bin/env python3
"""Balance of uneven tasks: 2 engines, one long task, then many no-op tasks.

    python tools/bench/uneven_tasks.py [--long-ms 500] [--tasks 1999] [--prefetch N] [--prefetch-max N]

A no-op task prefetched by the engine that runs the long one waits for it
unless that engine gives it back (docs/architecture.rst, "Engine credit").
Prints the latency (submission to result) of the no-op tasks and how many
waited over half the long task.  With ZFARM_BIN_DIR pointing at other
binaries it measures those.
"""
from __future__ import annotations

import argparse
import time


def sleeper(seconds):
    import time as _time

    _time.sleep(seconds)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--long-ms", type=float, default=500)
    ap.add_argument("--tasks", type=int, default=1999)
    ap.add_argument("--prefetch", type=int, default=None)
    ap.add_argument("--prefetch-max", type=int, default=None)
    args = ap.parse_args()

    import zfarm

    with zfarm.Cluster(n=2, prefetch=args.prefetch, prefetch_max=args.prefetch_max) as rc:
        rc.wait_for_engines(2, timeout=30)
        lv = rc.load_balanced_view()
        for _ in range(200):
            lv.apply_async(abs, -1).get(30)
        latencies = []
        long_ar = lv.apply_async(sleeper, args.long_ms / 1000)
        ars = []
        for i in range(args.tasks):
            submitted = time.perf_counter()
            ar = lv.apply_async(abs, -i)
            ar.add_done_callback(lambda _, t=submitted: latencies.append(time.perf_counter() - t))
            ars.append(ar)
        for ar in ars:
            ar.get(60)
        long_ar.get(60)
        while len(latencies) < len(ars):  # the last callbacks may still run
            time.sleep(0.001)
        latencies.sort()
        status = rc.queue_status()

        def ms(q):
            return latencies[int(q * (len(latencies) - 1))] * 1000

        stuck = sum(x * 1000 > args.long_ms / 2 for x in latencies)
        print(f"no-op tasks: median {ms(0.5):.1f} ms, p99 {ms(0.99):.1f} ms, max {latencies[-1] * 1000:.1f} ms; "
              f"{stuck} waited over {args.long_ms / 2:.0f} ms; given back {status.get('given_back', '-')}, "
              f"Credit messages {status.get('credits', '-')}", flush=True)


if __name__ == "__main__":
    main()
