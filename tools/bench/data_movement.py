"""Push, scatter, gather and pull of a large numpy array with zfarm (MB/s).

``--mode repeat`` times each operation ``--runs`` times in one process and
prints the medians; ``--mode fresh`` starts a new process (and Cluster) per
run and times each operation once there, after an untimed 2 MB round, as
tools/bench/bench.py does.

    .venv/bin/python tools/bench/data_movement.py --mode fresh --runs 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

OPS = ("push", "scatter", "gather", "pull")


def measure(mb: int, runs: int, engines: int) -> dict:
    import numpy as np
    import zfarm

    arr = np.random.default_rng(0).random(mb * 1_000_000 // 8)
    times = {op: [] for op in OPS}
    with zfarm.Cluster(n=engines) as rc:
        dv = rc[:]
        warm = arr[: 2_000_000 // 8]
        dv.push({"a": warm}).get(60)
        dv.scatter("x", warm).get(60)
        dv.gather("x").get(60)
        for _ in range(runs):
            t = time.perf_counter()
            dv.push({"a": arr}).get(300)
            times["push"].append(time.perf_counter() - t)
            t = time.perf_counter()
            dv.scatter("x", arr).get(300)
            times["scatter"].append(time.perf_counter() - t)
            t = time.perf_counter()
            back = dv.gather("x").get(300)
            times["gather"].append(time.perf_counter() - t)
            if not np.array_equal(back, arr):
                raise SystemExit("gather: the array came back different")
            del back
            t = time.perf_counter()
            whole = rc[0].pull("a").get(300)
            times["pull"].append(time.perf_counter() - t)
            del whole
    return {op: [arr.nbytes / 1e6 / s for s in ts] for op, ts in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("repeat", "fresh"), default="repeat")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.mb, 1, args.engines)))
        return 0
    if args.mode == "repeat":
        rates = measure(args.mb, args.runs, args.engines)
    else:
        rates = {op: [] for op in OPS}
        for _ in range(args.runs):
            out = subprocess.run([sys.executable, __file__, "--child", "--mb", str(args.mb), "--engines",
                                  str(args.engines)], capture_output=True, text=True, timeout=600, check=True)
            for op, values in json.loads(out.stdout.strip().splitlines()[-1]).items():
                rates[op] += values
    for op in OPS:
        values = ", ".join(f"{v:,.0f}" for v in rates[op])
        print(f"{op:8s} median {statistics.median(rates[op]):7,.0f} MB/s   ({values})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
