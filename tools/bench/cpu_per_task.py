#!/usr/bin/env python3
"""CPU time per task of each zfarm process: less noisy than wall time on a
shared machine.

    python tools/bench/cpu_per_task.py [--tasks 20000] [--reps 2000] [--broker-args ARGS]

Starts a local cluster of 2 engines; for async no-op tasks (submitted one by
one, then gathered) and for apply+get round trips prints wall time and the
CPU time (user + system, from /proc) the client, the broker and the engines
spent per task, with the load average.
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import time

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--prefetch", type=int, default=None)
    ap.add_argument("--broker-args", default="")
    args = ap.parse_args()

    import zfarm

    cluster = zfarm.Cluster(n=args.engines, prefetch=args.prefetch, broker_args=shlex.split(args.broker_args))
    with cluster as rc:
        lv = rc.load_balanced_view()
        for _ in range(100):
            lv.apply_async(int).get(60)
        procs = {p.pid: os.path.basename(str(p.args[0])) for p in cluster.processes()}
        for mode in ("async", "latency"):
            for _ in range(args.runs):
                before = {pid: _cpu(pid) for pid in procs}
                mine = _own_cpu()
                samples = []
                t0 = time.perf_counter()
                if mode == "async":
                    n = args.tasks
                    ars = [lv.apply_async(int) for _ in range(n)]
                    for ar in ars:
                        ar.get(300)
                else:
                    n = args.reps
                    for _ in range(n):
                        t1 = time.perf_counter()
                        lv.apply_async(int).get(60)
                        samples.append(time.perf_counter() - t1)
                wall = time.perf_counter() - t0
                per: dict = {"client": _own_cpu() - mine}
                for pid, name in procs.items():
                    per[name] = per.get(name, 0.0) + _cpu(pid) - before[pid]
                extra = f" median {statistics.median(samples) * 1e6:.0f} us" if samples else ""
                print(f"{mode}: {n / wall:.0f}/s{extra}; cpu us/task "
                      + " ".join(f"{k} {v / n * 1e6:.1f}" for k, v in per.items())
                      + f"; load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
