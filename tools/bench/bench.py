#!/usr/bin/env python3
"""zfarm side by side with its peers.

    python tools/bench/bench.py [--engines 2] [--size small|full] [--out docs/bench.png]

Compares zfarm with ipyparallel, Dask distributed (LocalCluster with
processes=True, threads_per_worker=1) and concurrent.futures.ProcessPoolExecutor,
all with the same number of workers, on:

1. latency (median, p99) of one no-op task round trip (load-balanced apply +
   get) and of execute on all engines;
2. async throughput: no-op tasks submitted one by one, then gathered;
3. map of many small items with default options: items/s and time to the
   first result;
4. push of a large numpy array to all engines, scatter and gather (MB/s of
   the array; after one untimed round with a 2 MB array);
5. efficiency of maps of 1 ms and 10 ms sleep tasks (% of ideal);
6. broker capacity with zfarm-loadgen (C++ simulated engines and client) for
   several engine counts with tasks waiting in the broker's queue (the
   client's window twice the engines' total credit), with Batches (protocol
   revision 4); at the fewest engines also without Batches and with
   credit 64, at the most also with a window of 1,000 (queue empty); the
   broker's memory per queued task, and the bare libzmq floor (same binary,
   --floor).

Each framework runs in a child process of its own (a new session) with a
time limit; whatever it started is killed with it.  Peers that are not
installed are skipped with a note.  ``--size small`` is a quick check that
the benchmark works; ``--size full`` gives the published figures.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

FRAMEWORKS = ["zfarm", "ipyparallel", "dask", "processpool"]

SIZES = {
    # A quick check that everything works (about 30 s with every peer installed).
    "small": dict(lat_reps=50, async_tasks=500, map_items=500, array_mb=10, sleep_tasks_1ms=100,
                  sleep_tasks_10ms=20, lg_tasks=20000, lg_engines=[2, 100], lg_queue=100000,
                  floor_tasks=20000, child_timeout=30),
    "full": dict(lat_reps=2000, async_tasks=20000, map_items=100000, array_mb=200, sleep_tasks_1ms=2000,
                 sleep_tasks_10ms=400, lg_tasks=200000, lg_engines=[2, 100, 1000], lg_queue=1000000,
                 floor_tasks=200000, child_timeout=900),
}

# (key, label, unit, higher_is_better)
METRICS = [
    ("apply_p50_ms", "apply+get latency, median", "ms", False),
    ("apply_p99_ms", "apply+get latency, p99", "ms", False),
    ("all_p50_ms", "execute on all, median", "ms", False),
    ("all_p99_ms", "execute on all, p99", "ms", False),
    ("async_tasks_per_s", "async no-op tasks", "tasks/s", True),
    ("map_items_per_s", "map of small items", "items/s", True),
    ("map_first_ms", "map: time to first result", "ms", False),
    ("push_mb_per_s", "push array to all", "MB/s", True),
    ("scatter_mb_per_s", "scatter array", "MB/s", True),
    ("gather_mb_per_s", "gather array", "MB/s", True),
    ("eff_1ms_pct", "map of 1 ms sleeps, efficiency", "%", True),
    ("eff_10ms_pct", "map of 10 ms sleeps, efficiency", "%", True),
]


# ----------------------------------------------------------------------------
# Helpers run in the child processes
# ----------------------------------------------------------------------------

def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _p50_p99(samples):
    s = sorted(samples)
    return _ms(statistics.median(s)), _ms(s[min(len(s) - 1, int(0.99 * len(s)))])


def _timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


class Adapter:
    """One framework: start/stop and one method per measurement.

    A method may raise NotImplementedError to say the framework has no such
    operation; the table then shows "n/a".
    """

    name = "?"

    def __init__(self, n: int):
        self.n = n

    def start(self):
        raise NotImplementedError

    def stop(self):
        pass

    def apply_get(self):  # one no-op, load-balanced, round trip
        raise NotImplementedError

    def execute_all(self):
        raise NotImplementedError

    def submit_many(self, k):  # k no-op tasks one by one, then gather
        raise NotImplementedError

    def map_first(self, items):  # returns (time to first, total time)
        raise NotImplementedError

    def map_sleep(self, seconds, k):
        raise NotImplementedError

    def push(self, arr):
        raise NotImplementedError

    def scatter(self, arr):
        raise NotImplementedError

    def gather(self):
        raise NotImplementedError


class ZfarmAdapter(Adapter):
    name = "zfarm"

    def start(self):
        import zfarm

        self.cluster = zfarm.Cluster(n=self.n)
        self.rc = self.cluster.__enter__()
        self.pinned = self.cluster.cpus is not None
        self.lv = self.rc.load_balanced_view()
        self.dv = self.rc[:]

    def stop(self):
        self.cluster.__exit__(None, None, None)

    def apply_get(self):
        self.lv.apply_async(int).get(60)

    def execute_all(self):
        self.dv.execute("pass").get(60)

    def submit_many(self, k):
        ars = [self.lv.apply_async(int) for _ in range(k)]
        for ar in ars:
            ar.get(300)

    def map_first(self, items):
        t0 = time.perf_counter()
        ar = self.lv.map(abs, range(items))
        it = iter(ar)
        next(it)
        first = time.perf_counter() - t0
        ar.get(300)
        return first, time.perf_counter() - t0

    def map_sleep(self, seconds, k):
        self.lv.map(time.sleep, [seconds] * k).get(300)

    def push(self, arr):
        self.dv.push({"a": arr}).get(300)

    def scatter(self, arr):
        self.dv.scatter("x", arr).get(300)

    def gather(self):
        return self.dv.gather("x").get(300)


class IpyparallelAdapter(Adapter):
    name = "ipyparallel"

    def start(self):
        import ipyparallel as ipp

        self.cluster = ipp.Cluster(n=self.n, log_level=40)
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(self.n, timeout=60)
        self.lv = self.rc.load_balanced_view()
        self.dv = self.rc[:]

    def stop(self):
        try:
            self.rc.close()
        finally:
            self.cluster.stop_cluster_sync()

    def apply_get(self):
        self.lv.apply_async(int).get(60)

    def execute_all(self):
        self.dv.execute("pass").get(60)

    def submit_many(self, k):
        ars = [self.lv.apply_async(int) for _ in range(k)]
        for ar in ars:
            ar.get(300)

    def map_first(self, items):
        t0 = time.perf_counter()
        ar = self.lv.map(abs, range(items))
        it = iter(ar)
        next(it)
        first = time.perf_counter() - t0
        ar.get(600)
        return first, time.perf_counter() - t0

    def map_sleep(self, seconds, k):
        self.lv.map(time.sleep, [seconds] * k).get(300)

    def push(self, arr):
        self.dv.push({"a": arr}, block=True)

    def scatter(self, arr):
        self.dv.scatter("x", arr, block=True)

    def gather(self):
        return self.dv.gather("x", block=True)


class DaskAdapter(Adapter):
    name = "dask"

    def start(self):
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=self.n, processes=True, threads_per_worker=1,
                                    dashboard_address=None, silence_logs=50)
        self.client = Client(self.cluster)
        self.client.wait_for_workers(self.n, timeout=60)
        self.parts = None

    def stop(self):
        try:
            self.client.close()
        finally:
            self.cluster.close()

    def apply_get(self):
        self.client.submit(int, pure=False).result(60)

    def execute_all(self):
        # Runs a function on every worker, outside the task graph: the
        # nearest thing Dask has to executing code on all engines.
        self.client.run(int)

    def submit_many(self, k):
        futures = [self.client.submit(int, pure=False) for _ in range(k)]
        self.client.gather(futures)

    def map_first(self, items):
        from dask.distributed import as_completed

        t0 = time.perf_counter()
        futures = self.client.map(abs, range(items))
        next(iter(as_completed(futures)))
        first = time.perf_counter() - t0
        self.client.gather(futures)
        return first, time.perf_counter() - t0

    def map_sleep(self, seconds, k):
        self.client.gather(self.client.map(time.sleep, [seconds] * k, pure=False))

    def push(self, arr):
        # Broadcast scatter: the array is stored on every worker.
        self.client.scatter(arr, broadcast=True)

    def scatter(self, arr):
        import numpy as np

        self.parts = self.client.scatter(np.array_split(arr, self.n))

    def gather(self):
        import numpy as np

        return np.concatenate(self.client.gather(self.parts))


class ProcessPoolAdapter(Adapter):
    name = "processpool"

    def start(self):
        from concurrent.futures import ProcessPoolExecutor

        self.ex = ProcessPoolExecutor(max_workers=self.n)
        # Start the workers before measuring anything.
        list(self.ex.map(int, range(self.n * 4)))

    def stop(self):
        self.ex.shutdown(wait=True, cancel_futures=True)

    def apply_get(self):
        self.ex.submit(int).result(60)

    def submit_many(self, k):
        futures = [self.ex.submit(int) for _ in range(k)]
        for f in futures:
            f.result(300)

    def map_first(self, items):
        t0 = time.perf_counter()
        it = self.ex.map(abs, range(items), timeout=600)
        next(it)
        first = time.perf_counter() - t0
        for _ in it:
            pass
        return first, time.perf_counter() - t0

    def map_sleep(self, seconds, k):
        list(self.ex.map(time.sleep, [seconds] * k, timeout=300))


ADAPTERS = {a.name: a for a in (ZfarmAdapter, IpyparallelAdapter, DaskAdapter, ProcessPoolAdapter)}
IMPORTS = {"zfarm": "zfarm", "ipyparallel": "ipyparallel", "dask": "distributed", "processpool": "concurrent.futures"}


def run_one(name: str, n: int, size: dict) -> dict:
    """Runs every measurement of one framework; returns {metric: value, notes: [...]}."""
    import numpy as np

    out = {"framework": name, "notes": []}
    adapter = ADAPTERS[name](n)
    t_start, _ = _timed(adapter.start)
    out["start_s"] = t_start
    if hasattr(adapter, "pinned"):
        out["pinned"] = adapter.pinned
    print(json.dumps(out), flush=True)
    try:
        def attempt(label, fn):
            try:
                fn()
            except NotImplementedError:
                out["notes"].append(f"{label}: no such operation")
            except Exception as exc:  # noqa: BLE001 - one failure must not end the run
                out["notes"].append(f"{label}: failed: {exc!r}"[:300])

        def latency():
            for _ in range(10):
                adapter.apply_get()
            samples = [_timed(adapter.apply_get)[0] for _ in range(size["lat_reps"])]
            out["apply_p50_ms"], out["apply_p99_ms"] = _p50_p99(samples)

        def latency_all():
            adapter.execute_all()
            samples = [_timed(adapter.execute_all)[0] for _ in range(size["lat_reps"])]
            out["all_p50_ms"], out["all_p99_ms"] = _p50_p99(samples)

        def throughput():
            k = size["async_tasks"]
            t, _ = _timed(lambda: adapter.submit_many(k))
            out["async_tasks_per_s"] = k / t

        def mapping():
            k = size["map_items"]
            first, total = adapter.map_first(k)
            out["map_items_per_s"] = k / total
            out["map_first_ms"] = _ms(first)

        def arrays():
            mb = size["array_mb"]
            arr = np.random.default_rng(0).random(mb * 1024 * 1024 // 8)
            # One untimed round with a 2 MB array first, for every framework:
            # the figures are then about moving data, not about the workers'
            # first numpy import.
            warm = arr[: 2 * 1024 * 1024 // 8]
            adapter.push(warm)
            adapter.scatter(warm)
            adapter.gather()
            t, _ = _timed(lambda: adapter.push(arr))
            out["push_mb_per_s"] = mb / t
            t, _ = _timed(lambda: adapter.scatter(arr))
            out["scatter_mb_per_s"] = mb / t
            t, back = _timed(adapter.gather)
            out["gather_mb_per_s"] = mb / t
            if back is None or len(back) != len(arr) or not np.array_equal(back, arr):
                out["notes"].append("gather: the array came back different")

        def efficiency():
            for key, seconds, k in (("eff_1ms_pct", 0.001, size["sleep_tasks_1ms"]),
                                    ("eff_10ms_pct", 0.010, size["sleep_tasks_10ms"])):
                t, _ = _timed(lambda: adapter.map_sleep(seconds, k))
                out[key] = 100.0 * (seconds * k / n) / t

        out["phase_s"] = {}
        for label, fn in (("latency", latency), ("execute on all", latency_all), ("async throughput", throughput),
                          ("map", mapping), ("arrays", arrays), ("sleep efficiency", efficiency)):
            t = time.perf_counter()
            attempt(label, fn)
            out["phase_s"][label] = round(time.perf_counter() - t, 2)
            # Partial results survive a child stopped at its time limit.
            print(json.dumps(out), flush=True)
    finally:
        adapter.stop()
    return out


# ----------------------------------------------------------------------------
# zfarm-loadgen (broker capacity, memory, floor)
# ----------------------------------------------------------------------------

def find_program(name: str, env: str, build_rel: str):
    if os.environ.get(env):
        return os.environ[env]
    for folder in (os.path.dirname(sys.executable), os.path.join(ROOT, ".venv", "bin")):
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    for build in ("build-bench", "build-main", "build-pip"):
        path = os.path.join(ROOT, build, build_rel)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def _run_json(args, timeout):
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    if not lines:
        return None, f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
    result = json.loads(lines[-1])
    if p.returncode != 0:
        result["error"] = f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
    return result, None


class Broker:
    """A zfarm-broker of our own, stopped on exit."""

    def __init__(self, path):
        self.dir = tempfile.mkdtemp(prefix="zfarm-bench-")
        self.file = os.path.join(self.dir, "connection.json")
        self.proc = subprocess.Popen([path, "--connection-file", self.file], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("zfarm-broker did not start")
            time.sleep(0.01)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_loadgen(size: dict) -> dict:
    loadgen = find_program("zfarm-loadgen", "ZFARM_LOADGEN", "tools/zfarm-loadgen")
    broker = find_program("zfarm-broker", "ZFARM_BROKER", "broker/zfarm-broker")
    out = {"notes": [], "capacity": [], "capacity_unbatched": [], "capacity_credit64": [], "capacity_short_window": [],
           "loadgen": loadgen, "broker": broker}
    if not loadgen or not broker:
        out["notes"].append("zfarm-loadgen or zfarm-broker not found (build with meson: "
                            "meson setup build-bench && meson compile -C build-bench)")
        return out
    window = 1000
    # Credit 16: what a real engine asks for while its tasks are short
    # (--prefetch-max); credit 2 would bind 2 engines to 4 tasks in flight
    # and measure round trips, not the broker.
    credit = 16

    def saturating(engines: int, credit: int = credit) -> int:
        # Capacity is measured with tasks waiting in the broker's queue: the
        # client keeps twice the engines' total credit outstanding (at least
        # 1,000).  With a window of 1,000 and 1,000 engines each engine would
        # hold one task and the queue would stay empty: every Task and Result
        # would go alone, and the figure would be of round trips through
        # 1,000 idle connections, not of the broker at full load.
        return max(window, 2 * engines * credit)

    # Batches (protocol revision 4) at every engine count, as zfarm's own
    # engines and client speak.  The fewest engines also without them
    # (--no-batch: one message per Submit, Task and Result), and with credit
    # 64 (each engine's Batches four times larger); the most engines also
    # with the window of 1,000 (queue empty).
    fewest, most = min(size["lg_engines"]), max(size["lg_engines"])
    runs = [(engines, "capacity", saturating(engines), credit, []) for engines in size["lg_engines"]]
    runs.append((fewest, "capacity_unbatched", saturating(fewest), credit, ["--no-batch"]))
    runs.append((fewest, "capacity_credit64", saturating(fewest, 64), 64, []))
    if saturating(most) != window:
        runs.append((most, "capacity_short_window", window, credit, []))
    for engines, key, w, c, extra in runs:
        with Broker(broker) as b:
            r, err = _run_json([loadgen, "--connection-file", b.file, "--engines", str(engines), "--credit",
                                str(c), "--tasks", str(size["lg_tasks"]), "--window", str(w),
                                "--payload-bytes", "16", "--timeout", "120", "--json", *extra], timeout=150)
        if err:
            out["notes"].append(f"loadgen {engines} engines{' ' + ' '.join(extra) if extra else ''}: {err}")
        else:
            out[key].append(r)
    with Broker(broker) as b:
        r, err = _run_json([loadgen, "--connection-file", b.file, "--queue-memory", str(size["lg_queue"]),
                            "--payload-bytes", "16", "--timeout", "120", "--json"], timeout=150)
    if err:
        out["notes"].append(f"queue memory: {err}")
    else:
        out["memory"] = r
    # The floor over tcp goes beside the broker's capacity (the loadgen talks
    # tcp to it); over ipc beside the Python round trip (a Cluster uses ipc),
    # also with proxy and echo pinned as a pinned Cluster's broker and engine.
    for key, extra in (("floor", []), ("floor_ipc", ["--floor-ipc"]),
                       ("floor_ipc_pinned", ["--floor-ipc", "--floor-pin"])):
        r, err = _run_json([loadgen, "--floor", *extra, "--tasks", str(size["floor_tasks"]), "--window",
                            str(window), "--payload-bytes", "16", "--timeout", "60", "--json"], timeout=90)
        if err:
            out["notes"].append(f"libzmq {key.replace('_', ' ')}: {err}")
        else:
            out[key] = r
    return out


# ----------------------------------------------------------------------------
# The parent: children, table, plot
# ----------------------------------------------------------------------------

def available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(IMPORTS[name]) is not None
    except (ImportError, ValueError):
        return False


def run_child(name: str, engines: int, size_name: str, timeout: float):
    """Runs one framework in a new session; kills the whole group on timeout."""
    cmd = [sys.executable, "-X", "faulthandler", os.path.abspath(__file__), "--child", name, "--engines", str(engines),
           "--size", size_name]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=10)
        lines = [x for x in stdout.splitlines() if x.startswith("{")]
        partial = json.loads(lines[-1]) if lines else {"framework": name, "notes": []}
        done = ", ".join(partial.get("phase_s", {})) or "nothing"
        partial["notes"].append(f"stopped at the time limit of {timeout:.0f} s; finished: {done}")
        return partial
    finally:
        # Whatever it left behind in its session goes too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    lines = [x for x in stdout.splitlines() if x.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"framework": name, "notes": []}
    if proc.returncode != 0 or not lines:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        done = ", ".join(result.get("phase_s", {})) or "nothing"
        result["notes"].append(f"the child process failed (exit {proc.returncode}) after finishing: {done}; "
                               f"stderr: {tail}"[:600])
    return result


def fmt(v):
    if v is None:
        return "n/a"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def print_table(results: dict, lg: dict, engines: int, size_name: str) -> str:
    names = [n for n in FRAMEWORKS if n in results]
    lines = []
    head = f"{'metric':36s} {'unit':8s}" + "".join(f"{n:>22s}" for n in names)
    lines.append(head)
    lines.append("-" * len(head))
    z = results.get("zfarm", {})
    for key, label, unit, _higher in METRICS:
        row = f"{label:36s} {unit:8s}"
        for n in names:
            v = results[n].get(key)
            cell = fmt(v)
            if n != "zfarm" and v is not None and z.get(key):
                cell += f" ({v / z[key]:.2f}x)"
            row += f"{cell:>22s}"
        lines.append(row)
    lines.append("")
    lines.append("ratios are peer / zfarm (for latency and time to first result lower is better, "
                 "for the rest higher is better)")
    lines.append("")
    floor = lg.get("floor")
    for r in [r for key in ("capacity", "capacity_unbatched", "capacity_credit64", "capacity_short_window")
              for r in lg.get(key, [])]:
        extra = ""
        if floor:
            extra = f"  ({r['tasks_per_s'] / floor['msgs_per_s']:.2f}x the libzmq floor)"
        how = "batched" if r.get("batched", False) else "no batches"
        lines.append(f"broker capacity, {r['engines']:5d} simulated engines (credit {r.get('credit', '?')}, {how}): "
                     f"{r['tasks_per_s']:>10,.0f} tasks/s, "
                     f"round trip p50 {r['latency_p50_us'] / 1000:.1f} ms with window {r['window']}, "
                     f"broker at {r.get('broker_cpu_pct', -1):.0f}% of a core{extra}")
    for key, transport in (("floor", "tcp"), ("floor_ipc", "ipc"), ("floor_ipc_pinned", "ipc, pinned")):
        f = lg.get(key)
        if f:
            lines.append(f"libzmq floor (DEALER->ROUTER proxy->DEALER echo, {transport}): {f['msgs_per_s']:>10,.0f} "
                         f"msgs/s with window {f['window']}, one-at-a-time round trip p50 "
                         f"{f['latency_p50_us']:.0f} us, p99 {f['latency_p99_us']:.0f} us")
    # The floor placed as zfarm's cluster was: pinned or not.
    pinned = results.get("zfarm", {}).get("pinned")
    f = lg.get("floor_ipc_pinned" if pinned else "floor_ipc")
    rt = results.get("zfarm", {}).get("apply_p50_ms")
    if f and rt:
        lines.append(f"zfarm apply+get median is {rt * 1000 / f['latency_p50_us']:.1f}x the "
                     f"{'pinned ' if pinned else ''}ipc floor's round trip "
                     f"(the same four hops between three libzmq contexts)")
    m = lg.get("memory")
    if m:
        lines.append(f"broker memory per queued task: {m['bytes_per_task']:.0f} bytes "
                     f"({m['submitted']:,} queued, {m['payload_bytes']} B payload each; "
                     f"VmRSS {m['rss_before_kib'] / 1024:.0f} -> {m['rss_after_kib'] / 1024:.0f} MiB)")
    for n in FRAMEWORKS:
        r = results.get(n)
        if r is None:
            continue
        for note in r.get("notes", []):
            lines.append(f"note [{n}]: {note}")
        if "start_s" in r:
            lines.append(f"note [{n}]: start-up {r['start_s']:.2f} s (not in any figure)")
    for note in lg.get("notes", []):
        lines.append(f"note [loadgen]: {note}")
    text = "\n".join(lines)
    print(text)
    return text


def plot(results: dict, lg: dict, path: str, engines: int) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    names = [n for n in FRAMEWORKS if n in results]
    z = results.get("zfarm", {})
    keys = [m for m in METRICS if z.get(m[0])]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 0.25 * len(keys) * max(1, len(names) - 1) + 2),
                                  gridspec_kw={"width_ratios": [3, 1]})
    height = 0.8 / max(1, len(names) - 1)
    peers = [n for n in names if n != "zfarm"]
    for j, n in enumerate(peers):
        ys, vals = [], []
        for i, (key, _label, _unit, higher) in enumerate(keys):
            v = results[n].get(key)
            if v is None or not z.get(key):
                continue
            # Normalised so that > 1 always means "better than zfarm".
            ratio = v / z[key] if higher else z[key] / v
            ys.append(i + j * height)
            vals.append(ratio)
        ax.barh(ys, vals, height=height, label=n)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks([i + height * (len(peers) - 1) / 2 for i in range(len(keys))])
    ax.set_yticklabels([m[1] for m in keys])
    ax.set_xscale("log")
    ax.set_xlabel("peer relative to zfarm (> 1: peer better, < 1: zfarm better), log scale")
    ax.invert_yaxis()
    ax.legend(loc="best")
    ax.set_title(f"zfarm vs peers, {engines} workers, {datetime.date.today().isoformat()}")
    # Broker capacity from zfarm-loadgen, beside the bare libzmq floor.
    labels, rates, colors = [], [], []
    for r in lg.get("capacity", []):
        labels.append(f"broker\n{r['engines']} eng.")
        rates.append(r["tasks_per_s"])
        colors.append("tab:blue")
    if lg.get("floor"):
        labels.append("libzmq\nfloor")
        rates.append(lg["floor"]["msgs_per_s"])
        colors.append("tab:gray")
    if rates:
        ax2.bar(range(len(rates)), rates, color=colors)
        ax2.set_xticks(range(len(rates)))
        ax2.set_xticklabels(labels)
        ax2.set_ylabel("round trips / s (C++ loadgen)")
        ax2.set_title("broker capacity")
    else:
        ax2.set_axis_off()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot saved to {path}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", type=int, default=2, help="workers for every framework (default 2)")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--out", default=None, help="save a plot here (needs matplotlib)")
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    ap.add_argument("--only", default=None, help="comma-separated frameworks, e.g. zfarm,dask")
    ap.add_argument("--no-loadgen", action="store_true", help="skip the zfarm-loadgen part")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    size = SIZES[args.size]

    if args.child:
        print(json.dumps(run_one(args.child, args.engines, size)), flush=True)
        return 0

    t0 = time.monotonic()
    wanted = args.only.split(",") if args.only else FRAMEWORKS
    results = {}
    print(f"zfarm benchmark: {args.engines} workers, size {args.size}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores, {datetime.datetime.now().isoformat(timespec='seconds')}", flush=True)
    for name in wanted:
        if name not in ADAPTERS:
            print(f"unknown framework {name!r}; choose from {FRAMEWORKS}", file=sys.stderr)
            return 2
        if not available(name):
            results[name] = {"framework": name, "notes": ["not installed: skipped"]}
            continue
        t = time.monotonic()
        results[name] = run_child(name, args.engines, args.size, size["child_timeout"])
        print(f"  {name}: done in {time.monotonic() - t:.1f} s", flush=True)
    lg = {"notes": ["skipped (--no-loadgen)"]} if args.no_loadgen else run_loadgen(size)
    print(f"  loadgen: done; total {time.monotonic() - t0:.1f} s", flush=True)
    print()
    print_table(results, lg, args.engines, args.size)
    if args.out:
        print(plot(results, lg, args.out, args.engines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"engines": args.engines, "size": args.size, "results": results, "loadgen": lg,
                       "date": datetime.datetime.now().isoformat(timespec="seconds")}, f, indent=1)
    print(f"total {time.monotonic() - t0:.1f} s")
    return 0 if "zfarm" in results and not results["zfarm"].get("notes") else 1


if __name__ == "__main__":
    sys.exit(main())
