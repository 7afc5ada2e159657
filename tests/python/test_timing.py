"""Per-task timing: submitted, started, completed, received, serial_time and
metadata, through a real cluster, and across protocol revisions.

Every clock here is this host's, so the order submitted <= started <=
completed <= received holds exactly; with engines on other hosts it holds
only as well as their clocks agree (docs/tasks.rst).
"""
from __future__ import annotations

import pickle
import time
from datetime import timedelta, timezone

import pytest

import zfarm
from zfarm import _core
from zfarm._cluster import read_connection_file

from conftest import WAIT, Gate, gated, wait_until

REGISTER, REGISTER_REPLY, TASK, RESULT = 1, 2, 5, 6


def nap(seconds):
    import time as _time

    _time.sleep(seconds)
    return seconds


def fail():
    raise ValueError("no")


def check_order(submitted, started, completed, received):
    for t in (submitted, started, completed, received):
        assert t is not None and t.tzinfo is timezone.utc
    assert submitted <= started <= completed <= received, (submitted, started, completed, received)


def test_a_single_task_has_ordered_times_and_its_run_time(rc):
    lv = rc.load_balanced_view()
    ar = lv.apply_async(nap, 0.05)
    assert ar.get(timeout=WAIT) == 0.05
    check_order(ar.submitted, ar.started, ar.completed, ar.received)
    assert ar.completed - ar.started >= timedelta(seconds=0.05)
    assert ar.serial_time >= 0.05
    # serial_time is the run time the engine measured; the datetimes are
    # that run time on a microsecond grid.
    assert abs((ar.completed - ar.started).total_seconds() - ar.serial_time) <= 2e-6
    md = ar.metadata
    assert md["status"] == "ok"
    assert md["engine_id"] == ar.engine_id
    assert md["task_id"] == ar.task_ids[0]
    assert (md["submitted"], md["started"], md["completed"], md["received"]) == (
        ar.submitted, ar.started, ar.completed, ar.received)


def test_map_gives_lists_and_serial_time_sums_the_tasks(rc):
    lv = rc.load_balanced_view()
    naps = [0.02, 0.04, 0.06, 0.08]
    ar = lv.map(nap, naps, chunksize=1)
    assert ar.get(timeout=WAIT) == naps
    for name in ("submitted", "started", "completed", "received", "metadata"):
        assert isinstance(getattr(ar, name), list) and len(getattr(ar, name)) == 4, name
    for times in zip(ar.submitted, ar.started, ar.completed, ar.received):
        check_order(*times)
    for seconds, started, completed in zip(naps, ar.started, ar.completed):
        assert completed - started >= timedelta(seconds=seconds)
    assert ar.serial_time >= sum(naps)
    runs = sum((c - s).total_seconds() for s, c in zip(ar.started, ar.completed))
    assert abs(runs - ar.serial_time) <= 4 * 2e-6
    assert [m["status"] for m in ar.metadata] == ["ok"] * 4
    assert [m["task_id"] for m in ar.metadata] == ar.task_ids


def test_direct_view_gives_one_entry_per_engine(rc):
    ar = rc[:].apply_async(nap, 0.01)
    assert ar.get(timeout=WAIT) == [0.01] * len(rc.ids)
    assert [m["engine_id"] for m in ar.metadata] == ar.engine_id == rc.ids
    for times in zip(ar.submitted, ar.started, ar.completed, ar.received):
        check_order(*times)
    assert ar.serial_time >= 0.01 * len(rc.ids)
    one = rc[rc.ids[0]].apply_async(nap, 0.01)
    one.get(timeout=WAIT)
    check_order(one.submitted, one.started, one.completed, one.received)


def test_a_remote_error_ran_and_is_timed(rc):
    ar = rc.load_balanced_view().apply_async(fail)
    with pytest.raises(zfarm.RemoteError):
        ar.get(timeout=WAIT)
    check_order(ar.submitted, ar.started, ar.completed, ar.received)
    assert ar.metadata["status"] == "error"
    assert ar.serial_time >= 0.0


def test_pending_tasks_have_no_times_yet(rc, tmp_path):
    gate = Gate(tmp_path)
    ar = rc.load_balanced_view().apply_async(gated, 2, gate.path, gate.folder, "one")
    try:
        wait_until(lambda: gate.started("one"), what="the task started")
        assert ar.submitted is not None
        assert (ar.started, ar.completed, ar.received) == (None, None, None)
        assert ar.serial_time == 0.0
        assert ar.metadata["status"] is None
    finally:
        gate.open()
    assert ar.get(timeout=WAIT) == 4
    check_order(ar.submitted, ar.started, ar.completed, ar.received)


def test_aborted_tasks_never_ran_and_have_no_start(own_cluster, tmp_path):
    c = own_cluster(n=1, prefetch=1)
    with c.connect(timeout=WAIT) as rc:
        gate = Gate(tmp_path)
        lv = rc.load_balanced_view()
        running = gate.hold(lv, 3, "running")
        queued = lv.map(nap, [0.5, 0.5, 0.5], chunksize=1)
        queued.abort()
        with pytest.raises(zfarm.CompositeError):
            queued.get(timeout=WAIT)
        gate.open()
        assert running.get(timeout=WAIT) == 9
        assert queued.started == [None] * 3
        assert queued.completed == [None] * 3
        assert all(r is not None for r in queued.received)  # the broker's answer did arrive
        assert queued.serial_time == 0.0
        assert [m["status"] for m in queued.metadata] == ["aborted"] * 3
        check_order(running.submitted, running.started, running.completed, running.received)


def test_outcomes_made_by_the_client_have_no_times(own_cluster, tmp_path):
    c = own_cluster(n=1)
    rc = c.connect(timeout=WAIT)
    gate = Gate(tmp_path)
    try:
        ar = gate.hold(rc.load_balanced_view(), 1, "held")
    finally:
        rc.close()  # ends the task here: TaskAborted, no message from the broker
        gate.open()
    with pytest.raises(zfarm.TaskAborted):
        ar.get(timeout=WAIT)
    assert (ar.started, ar.completed, ar.received) == (None, None, None)
    assert ar.metadata["status"] == "aborted"


def test_get_result_keeps_the_engine_times_and_knows_no_submission(rc):
    ar = rc.load_balanced_view().apply_async(nap, 0.01)
    ar.get(timeout=WAIT)
    again = rc.get_result(ar.task_ids[0])
    assert again.get(timeout=WAIT) == 0.01
    assert again.submitted is None
    assert (again.started, again.completed) == (ar.started, ar.completed)
    assert again.received >= ar.received
    assert again.serial_time == ar.serial_time


# -- revisions ---------------------------------------------------------------------


class FakeEngine:
    """An engine of a chosen revision, played with a raw core on the broker's
    engine socket: the test writes its Results by hand."""

    def __init__(self, endpoint: str, revision: int):
        self.core = _core.Core(endpoint)
        self.core.send(REGISTER, 0, [], 1, "fake:1", [], {"revision": revision})
        self.reply = self.next(REGISTER_REPLY)

    def next(self, mtype: int):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for m in self.core.recv(200):
                if m[0] == mtype:
                    return m
        raise AssertionError(f"no message of type {mtype} from the broker")

    def answer(self, targets) -> None:
        """Answers the next Task with the value 5 and these Result targets."""
        task = self.next(TASK)
        value = pickle.dumps(("ok", 5, "", ""), protocol=5)
        self.core.send(RESULT, task[1], list(targets), task[3], "", [value])


@pytest.mark.parametrize("targets,bad", [([], 0), ([123], 1), ([-5, 10], 1), ([1, 2, 3], 1)],
                         ids=["older-engine", "short", "negative", "long"])
def test_results_without_timing_or_with_a_malformed_one_still_deliver(own_cluster, targets, bad):
    c = own_cluster(n=0)
    engine = FakeEngine(read_connection_file(c.connection_file)["engine"], revision=2)
    try:
        with c.connect(timeout=WAIT) as rc:
            rc.wait_for_engines(1, timeout=WAIT)
            ar = rc.load_balanced_view().apply_async(int)
            engine.answer(targets)
            assert ar.get(timeout=WAIT) == 5
            assert (ar.started, ar.completed) == (None, None)
            assert ar.received is not None and ar.submitted <= ar.received
            assert ar.serial_time == 0.0
            assert ar.metadata["status"] == "ok"
            assert rc.queue_status()["bad_timing"] == bad
    finally:
        engine.core.close()


def test_a_timed_result_from_a_hand_made_engine_reaches_the_client(own_cluster):
    c = own_cluster(n=0)
    engine = FakeEngine(read_connection_file(c.connection_file)["engine"], revision=2)
    try:
        assert engine.reply[6] is None or engine.reply[7]["revision"] >= 3
        with c.connect(timeout=WAIT) as rc:
            rc.wait_for_engines(1, timeout=WAIT)
            ar = rc.load_balanced_view().apply_async(int)
            engine.answer([1_764_400_000_000_000, 2_500_000_000])  # 2025-11-29T07:06:40Z, 2.5 s
            assert ar.get(timeout=WAIT) == 5
            assert ar.started.timestamp() == 1_764_400_000
            assert ar.completed - ar.started == timedelta(seconds=2.5)
            assert ar.serial_time == 2.5
            assert rc.queue_status()["bad_timing"] == 0
    finally:
        engine.core.close()


def test_the_engine_times_its_tasks_for_a_broker_of_revision_0(tmp_path):
    """An older broker ignores a Result's targets; the engine sends them anyway."""
    from test_engine_faults import OK, FakeBroker, start_engine, stop

    endpoint = f"ipc://{tmp_path}/engine.sock"
    fb = FakeBroker(endpoint)  # announces no revision
    engine = start_engine(endpoint)
    try:
        eng = fb.wait_engine()
        before = time.time()
        fb.task(eng, 1, ("execute", "import time\ntime.sleep(0.02)\n"))
        status, _, _ = fb.result(1)
        after = time.time()
        assert status == OK
        started_us, run_ns = fb.timings[1]
        assert before * 1e6 - 1 <= started_us <= after * 1e6
        assert run_ns >= 20_000_000
        assert started_us / 1e6 + run_ns / 1e9 <= after
    finally:
        stop(engine)
        fb.close()


# The helpers above run on engines, which cannot import this module: send
# them by value.
import sys as _sys  # noqa: E402

import cloudpickle as _cloudpickle  # noqa: E402

_cloudpickle.register_pickle_by_value(_sys.modules[__name__])
