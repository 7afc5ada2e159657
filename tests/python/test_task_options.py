"""LoadBalancedView options (after, follow, targets, priority, timeout,
retries), imap, abort, cancel and interrupt, with real processes."""
from __future__ import annotations

import itertools
import os
import sys

import cloudpickle
import pytest

import zfarm
from conftest import WAIT, Gate, gated, spin, wait_until

# Engines cannot import this module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])




def stamp(x):
    """Runs on an engine: (x, start time, end time, pid); monotonic clocks are
    system-wide on Linux, so times from different engines compare."""
    import os as _os
    import time as _time

    start = _time.monotonic()
    _time.sleep(0.05)
    return x, start, _time.monotonic(), _os.getpid()


# -- flags on the client side -------------------------------------------------------


def test_set_flags_refuses_unknown_or_bad_values(rc):
    lv = rc.load_balanced_view()
    with pytest.raises(TypeError):
        lv.set_flags(retry=1)
    with pytest.raises(ValueError):
        lv.set_flags(retries=-1)
    with pytest.raises(ValueError):
        lv.set_flags(timeout=0)
    with pytest.raises(TypeError):
        lv.map(abs, [1], bogus=True)


def test_temp_flags_apply_inside_the_block_only(rc):
    lv = rc.load_balanced_view(retries=2)
    with lv.temp_flags(retries=0, timeout=5, priority=3) as same:
        assert same is lv
        assert (lv.retries, lv.timeout, lv.priority) == (0, 5, 3)
        opts, why = lv._options({})
        assert why is None and opts == {"timeout_ms": 5000, "priority": 3}
    assert (lv.retries, lv.timeout, lv.priority) == (2, None, 0)
    assert lv._options({})[0] == {"retries": 2}


def test_a_dependency_that_already_failed_fails_the_task_at_once(rc):
    lv = rc.load_balanced_view()
    bad = lv.apply_async(lambda: 1 / 0)
    with pytest.raises(zfarm.RemoteError):
        bad.get(timeout=WAIT)
    outstanding = rc.outstanding
    ar = lv.map(abs, [1, 2, 3], chunksize=1, after=bad)
    assert ar.done()  # nothing was sent
    assert rc.outstanding == outstanding
    with pytest.raises(zfarm.CompositeError) as info:
        ar.get(timeout=0)
    assert all(isinstance(e, zfarm.ImpossibleDependency) for e in info.value.errors)
    # It ran, though: following it means running where it ran.
    with lv.temp_flags(follow=bad):
        assert lv.apply_async(abs, -1).get(timeout=WAIT) == 1
        assert lv._options({})[0] == {"engines": [bad.engine_id]}


def test_a_dependency_that_already_succeeded_is_left_out(rc):
    lv = rc.load_balanced_view()
    first = lv.apply_async(abs, -2)
    assert first.get(timeout=WAIT) == 2
    with lv.temp_flags(after=[first, first.task_ids[0]]):
        opts, why = lv._options({})
    assert why is None
    assert opts == {"after": first.task_ids}  # the bare id cannot be judged here
    with lv.temp_flags(after=first):
        assert lv._options({})[0] is None
        assert lv.apply_sync(abs, -3) == 3


# -- imap ---------------------------------------------------------------------------------


def test_imap_yields_every_result_in_order(rc):
    lv = rc.load_balanced_view()
    assert list(lv.imap(lambda a, b: a * b, range(50), range(100, 150))) == [a * b for a, b in
                                                                          zip(range(50), range(100, 150))]


def test_imap_unordered_yields_every_result_once(rc):
    lv = rc.load_balanced_view()
    assert sorted(lv.imap(lambda x: -x, range(60), ordered=False)) == sorted(-x for x in range(60))


def test_imap_reads_its_input_lazily_and_stops_early(rc):
    lv = rc.load_balanced_view()
    consumed = []

    def source():
        for i in itertools.count():
            consumed.append(i)
            yield i

    results = lv.imap(lambda x: x + 1, source(), max_outstanding=3)
    assert consumed == []  # nothing read before the first next()
    got = [next(results) for _ in range(10)]
    assert got == list(range(1, 11))
    assert len(consumed) <= 10 + 3
    results.close()  # aborts what is still in flight; their ARs end
    assert rc.wait(timeout=WAIT)
    assert len(consumed) <= 10 + 3


def test_imap_raises_a_failed_item_in_its_turn(rc):
    lv = rc.load_balanced_view()
    it = lv.imap(lambda x: 10 // x, [5, 2, 0, 1])
    assert next(it) == 2
    assert next(it) == 5
    with pytest.raises(zfarm.RemoteError) as info:
        next(it)
    assert info.value.ename == "ZeroDivisionError"


# -- options the broker applies -------------------------------------------------------------


def test_after_runs_a_task_once_its_dependencies_ended(rc):
    lv = rc.load_balanced_view()
    first = lv.map(stamp, range(2), chunksize=1)
    with lv.temp_flags(after=first):
        then = lv.apply_async(stamp, "then")
    ends = [end for _, _, end, _ in first.get(timeout=WAIT)]
    _, start, _, _ = then.get(timeout=WAIT)
    assert start >= max(ends)


def test_after_a_task_that_fails_later_is_impossible(rc, tmp_path):
    gate = Gate(tmp_path)
    lv = rc.load_balanced_view()

    def fail_after_gate(path):
        gated(0, path)
        raise ValueError("dependency failed")

    dep = lv.apply_async(fail_after_gate, gate.path)
    with lv.temp_flags(after=dep):
        ar = lv.apply_async(abs, -1)
    gate.open()
    with pytest.raises(zfarm.ImpossibleDependency) as info:
        ar.get(timeout=WAIT)
    assert str(dep.task_ids[0]) in str(info.value)


def test_follow_runs_where_the_dependency_ran(rc):
    lv = rc.load_balanced_view()
    for _ in range(2):
        anchor = lv.apply_async(stamp, "anchor")
        followers = [lv.map(stamp, range(4), chunksize=1, follow=anchor) for _ in range(2)]
        where = anchor.get(timeout=WAIT)[3]
        for ar in followers:
            assert {pid for *_, pid in ar.get(timeout=WAIT)} == {where}
    # Following a finished task: the client turns it into a target.
    followers = lv.map(stamp, range(4), chunksize=1, follow=anchor)
    assert {pid for *_, pid in followers.get(timeout=WAIT)} == {where}


def test_targets_restrict_a_load_balanced_view(rc):
    one = rc.ids[-1]
    lv = rc.load_balanced_view(targets=[one])
    ar = lv.map(stamp, range(12), chunksize=1)
    ar.get(timeout=WAIT)
    assert set(ar.engine_id) == {one}
    nowhere = rc.load_balanced_view(targets=[max(rc.ids) + 1000])
    with pytest.raises(zfarm.ImpossibleDependency):
        nowhere.apply_sync(abs, 1)


def test_priority_runs_higher_first(own_cluster, tmp_path):
    c = own_cluster(n=1, prefetch=1)
    with c.connect(timeout=WAIT) as rc:
        gate = Gate(tmp_path)
        lv = rc.load_balanced_view()
        blocker = gate.hold(lv, 1, "blocker")
        low = lv.map(stamp, range(4), chunksize=1, priority=-1)
        mid = lv.map(stamp, range(4), chunksize=1)
        high = lv.map(stamp, range(4), chunksize=1, priority=5)
        # Answered after the Submits (one socket, in order): all 12 are queued.
        assert rc.queue_status()["queued"] == 12
        gate.open()
        assert blocker.get(timeout=WAIT) == 1
        starts = {name: [s for _, s, _, _ in ar.get(timeout=WAIT)] for name, ar in
                  (("low", low), ("mid", mid), ("high", high))}
        assert max(starts["high"]) < min(starts["mid"])
        assert max(starts["mid"]) < min(starts["low"])


def test_abort_drops_queued_tasks_only(own_cluster, tmp_path):
    c = own_cluster(n=1, prefetch=1)
    with c.connect(timeout=WAIT) as rc:
        gate = Gate(tmp_path)
        lv = rc.load_balanced_view()
        running = gate.hold(lv, 3, "running")
        queued = lv.map(abs, range(-5, 0), chunksize=1)
        queued.abort()
        running.abort()  # running: untouched
        with pytest.raises(zfarm.CompositeError) as info:
            queued.get(timeout=WAIT)
        assert len(info.value.errors) == 5
        assert all(isinstance(e, zfarm.TaskAborted) for e in info.value.errors)
        gate.open()
        assert running.get(timeout=WAIT) == 9
        assert lv.apply_sync(abs, -7) == 7


def test_client_abort_of_everything_pending(own_cluster, tmp_path):
    c = own_cluster(n=1, prefetch=1)
    with c.connect(timeout=WAIT) as rc:
        gate = Gate(tmp_path)
        lv = rc.load_balanced_view()
        running = gate.hold(lv, 2, "running")
        queued = [lv.apply_async(abs, -i) for i in range(4)]
        rc.abort()
        for ar in queued:
            with pytest.raises(zfarm.TaskAborted):
                ar.get(timeout=WAIT)
        gate.open()
        assert running.get(timeout=WAIT) == 4


def test_timeout_ends_a_task_and_the_engine_lives_on(own_cluster, tmp_path):
    c = own_cluster(n=1)
    with c.connect(timeout=WAIT) as rc:
        lv = rc.load_balanced_view()
        started = str(tmp_path / "started")
        with lv.temp_flags(timeout=0.5):
            ar = lv.apply_async(spin, 60, started)
            queued = lv.apply_async(spin, 60)  # times out while still queued or after starting
        with pytest.raises(zfarm.TaskTimedOut):
            ar.get(timeout=WAIT)
        with pytest.raises(zfarm.TaskTimedOut):
            queued.get(timeout=WAIT)
        assert os.path.exists(started)
        assert lv.apply_sync(abs, -5) == 5  # the engine was interrupted, not stuck
        assert rc[:].apply_sync(os.getpid) == [c.engines[0].pid]


def test_cancel_interrupts_a_running_task(own_cluster, tmp_path):
    c = own_cluster(n=1)
    with c.connect(timeout=WAIT) as rc:
        lv = rc.load_balanced_view()
        started = str(tmp_path / "started")
        ar = lv.apply_async(spin, 60, started)
        behind = lv.apply_async(abs, -1)
        wait_until(lambda: os.path.exists(started), what="the task started")
        assert ar.cancel() is True
        with pytest.raises(zfarm.TaskAborted):
            ar.get(timeout=WAIT)
        assert behind.get(timeout=WAIT) == 1
        assert ar.cancel() is False  # already ended
        assert lv.apply_sync(abs, -6) == 6


def test_interrupt_an_engine(own_cluster, tmp_path):
    c = own_cluster(n=2)
    with c.connect(timeout=WAIT) as rc:
        started = str(tmp_path / "started")
        target = rc.ids[0]
        ar = rc[target].apply_async(spin, 60, started)
        wait_until(lambda: os.path.exists(started), what="the task started")
        rc.interrupt(targets=[target])
        with pytest.raises(zfarm.TaskAborted) as info:
            ar.get(timeout=WAIT)
        assert "interrupted" in str(info.value)
        assert rc[:].apply_sync(lambda: "alive") == ["alive", "alive"]


def test_engine_events_update_ids_without_asking(own_cluster):
    c = own_cluster(n=1)
    events = []
    rc = zfarm.Client(c.connection_file, on_event=lambda kind, eid, text: events.append((kind, eid)))
    try:
        first = rc.wait_for_engines(1, timeout=WAIT)
        c.add_engines(1)
        wait_until(lambda: len(rc.ids) == 2, what="the new engine in rc.ids")
        new = (set(rc.ids) - set(first)).pop()
        wait_until(lambda: ("joined", new) in events, what="a joined event")
        c.engines[-1].kill()
        c.engines[-1].wait(WAIT)
        wait_until(lambda: ("left", new) in events, what="a left event")
        assert rc.ids == first
    finally:
        rc.close()
