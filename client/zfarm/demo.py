"""The main job: start a local cluster, run a load-balanced map with a
progress bar, print the results.

Run it with ``python -m zfarm.demo [--engines N] [--items M]``.
"""
from __future__ import annotations

import argparse
import math
import time

import zfarm


def slow_prime_count(limit: int) -> int:
    """Counts primes below ``limit`` by trial division (deliberately CPU-bound)."""
    count = 0
    for k in range(2, limit):
        if all(k % d for d in range(2, math.isqrt(k) + 1)):
            count += 1
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=None,
                        help="engines to start (default: one per CPU this process may use)")
    parser.add_argument("--items", type=int, default=200, help="number of map items")
    args = parser.parse_args(argv)

    cluster = zfarm.Cluster(n=args.engines)
    print(f"starting a local zfarm cluster with {cluster.n} engines ...", flush=True)
    with cluster as rc:
        print(f"engines registered: {rc.ids}", flush=True)
        lv = rc.load_balanced_view()
        limits = [2000 + 37 * i for i in range(args.items)]
        start = time.perf_counter()
        ar = lv.map(slow_prime_count, limits, chunksize=4)
        ar.wait_interactive()
        results = ar.get()
        elapsed = time.perf_counter() - start
        where = sorted(set(ar.engine_id))
        print(f"{len(results)} results in {elapsed:.2f} s on engines {where}")
        for limit, count in list(zip(limits, results))[:5]:
            print(f"  primes below {limit}: {count}")
        print("  ...")
        for limit, count in list(zip(limits, results))[-3:]:
            print(f"  primes below {limit}: {count}")
        spot = [0, len(limits) - 1] if limits else []
        ok = all(results[i] == slow_prime_count(limits[i]) for i in spot)
        print(f"spot check against a local computation: {'ok' if ok else 'MISMATCH'}")
        if not ok:
            return 1
    print("cluster stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
