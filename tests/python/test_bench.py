"""The benchmark runs end to end at its small size (figures are not checked:
speed is reported in docs/benchmarks.rst, never asserted in tests)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "tools", "bench", "bench.py")
LOADGEN = os.path.join(ROOT, "build-pip", "tools", "zfarm-loadgen")  # tools/setup.sh builds it
PEERS = {"ipyparallel": "ipyparallel", "dask": "distributed"}

ZFARM_METRICS = [
    "apply_p50_ms", "apply_p99_ms", "all_p50_ms", "async_tasks_per_s", "map_items_per_s",
    "map_first_ms", "push_mb_per_s", "scatter_mb_per_s", "gather_mb_per_s", "eff_1ms_pct",
    "eff_10ms_pct",
]


@pytest.mark.timeout(400)
def test_small_benchmark_runs_every_framework_and_the_loadgen(tmp_path):
    out_json = tmp_path / "bench.json"
    env = dict(os.environ)
    if os.access(LOADGEN, os.X_OK):
        env["ZFARM_LOADGEN"] = LOADGEN
    proc = subprocess.run(
        [sys.executable, BENCH, "--size", "small", "--json", str(out_json), "--out", str(tmp_path / "bench.png")],
        capture_output=True, text=True, timeout=360, env=env, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    results = report["results"]
    zf = results["zfarm"]
    assert not zf.get("notes"), zf["notes"]
    # The bench's 2-engine cluster pins as Cluster(pin="auto") does.
    assert zf["pinned"] is (len(os.sched_getaffinity(0)) == 2)
    for key in ZFARM_METRICS:
        assert isinstance(zf.get(key), (int, float)) and zf[key] > 0, (key, zf.get(key))
    # Every installed peer ran in the same run (the comparison is the point).
    for name, module in PEERS.items():
        if importlib.util.find_spec(module) is not None:
            assert isinstance(results[name].get("apply_p50_ms"), (int, float)), results[name]
    assert isinstance(results["processpool"].get("apply_p50_ms"), (int, float)), results["processpool"]
    # The C++ load generator drove the broker at each engine count, measured
    # queue memory and the bare libzmq floor.
    if os.access(LOADGEN, os.X_OK):
        lg = report["loadgen"]
        assert len(lg["capacity"]) == 2, lg.get("notes")
        assert all(r["tasks_per_s"] > 0 and r["batched"] for r in lg["capacity"])
        # ... with Batches, and at the fewest engines also without them.
        assert [(r["engines"], r["batched"]) for r in lg["capacity_unbatched"]] == [(2, False)], lg.get("notes")
        assert lg["capacity_unbatched"][0]["tasks_per_s"] > 0
        assert lg["capacity"][0]["engine_batches_in"] > 0
        assert lg["capacity_unbatched"][0]["engine_batches_in"] == 0
        # Capacity runs keep tasks queued in the broker: the window is twice
        # the engines' total credit (100 engines x 16 x 2); the most engines
        # run once more with the window of 1,000.
        assert [(r["engines"], r["window"]) for r in lg["capacity"]] == [(2, 1000), (100, 3200)]
        assert [(r["engines"], r["window"]) for r in lg["capacity_short_window"]] == [(100, 1000)]
        assert lg["capacity_short_window"][0]["tasks_per_s"] > 0
        assert [(r["engines"], r["credit"]) for r in lg["capacity_credit64"]] == [(2, 64)]
        assert lg["memory"]["bytes_per_task"] > 0
        assert lg["floor"]["msgs_per_s"] > 0
        assert lg["floor_ipc"]["transport"] == "ipc" and lg["floor_ipc"]["latency_p50_us"] > 0
        # The pinned floor pins wherever there are two CPUs to pin to.
        assert lg["floor_ipc_pinned"]["pinned"] is (len(os.sched_getaffinity(0)) >= 2)
        assert lg["floor_ipc_pinned"]["latency_p50_us"] > 0
    # The table names every framework.
    for name in ("zfarm", "processpool"):
        assert name in proc.stdout
