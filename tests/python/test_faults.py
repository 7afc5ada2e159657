"""Faults with real processes: engines killed mid-map, the broker restarted,
clients reconnecting, several clients at once.  Every wait is bounded and
every process is reaped (the own_cluster fixture checks)."""
from __future__ import annotations

import os
import sys
import threading

import cloudpickle
import pytest

import zfarm
from conftest import WAIT, Gate, engine_id_of, gated, pid_alive, wait_until

# Engines cannot import this module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N_TASKS = 10_000
GATE_AT = 5_000


def square_behind_gate(x, gate_path):
    """Short tasks; from GATE_AT on they wait for the gate, so a test can act
    while the map is certainly still running."""
    import time as _time

    if x >= GATE_AT:
        return gated(x, gate_path)
    _time.sleep(0.0002)
    return x * x




def kill_engine_mid_map(c, rc, gate, **flags):
    """Starts a 10,000-task map, kills one engine once it has run a while.

    Returns (AsyncResult, id of the killed engine).
    """
    lv = rc.load_balanced_view()
    ar = lv.map(square_behind_gate, range(N_TASKS), [gate.path] * N_TASKS, chunksize=1, **flags)
    wait_until(lambda: ar.progress >= 1000, what="a thousand results")
    victim = c.engines[0]
    victim_id = engine_id_of(rc, victim.pid)
    victim.kill()
    victim.wait(WAIT)
    return ar, victim_id


def test_engine_killed_during_a_map_with_retries_loses_nothing(own_cluster, tmp_path):
    c = own_cluster(n=3)
    gate = Gate(tmp_path)
    with c.connect(timeout=WAIT) as rc:
        ar, victim_id = kill_engine_mid_map(c, rc, gate, retries=1)
        wait_until(lambda: victim_id not in rc.ids, what="the dead engine removed")
        before = set(rc.ids)
        c.add_engines(1)
        new_id = wait_until(lambda: set(rc.ids) - before, what="the replacement engine").pop()
        gate.open()
        assert ar.get(timeout=WAIT) == [x * x for x in range(N_TASKS)]
        assert len(ar.task_ids) == N_TASKS and rc.outstanding == 0
        used = set(ar.engine_id)
        assert new_id in used
        assert victim_id in used  # it ran tasks before it died
        status = rc.queue_status()
        assert status["retried"] >= 1
        assert status["pending"] == 0


def test_engine_killed_during_a_map_without_retries(own_cluster, tmp_path):
    c = own_cluster(n=3)
    gate = Gate(tmp_path)
    with c.connect(timeout=WAIT) as rc:
        ar, victim_id = kill_engine_mid_map(c, rc, gate)
        gate.open()
        with pytest.raises(zfarm.CompositeError) as info:
            ar.get(timeout=WAIT)
        outcomes = ar.outcomes(timeout=0)
        lost = [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
        assert lost, "the killed engine held tasks"
        assert len(info.value.errors) == len(lost)
        for i, o in enumerate(outcomes):
            if isinstance(o, BaseException):
                assert isinstance(o, zfarm.EngineDiedError), o
                assert o.engine_id == victim_id
                assert o.task_id == ar.task_ids[i]
            else:
                assert o == [i * i]  # a map task's value is its chunk
        assert rc.load_balanced_view().map_sync(abs, range(-20, 0)) == list(range(20, 0, -1))


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_broker_restart_mid_run(own_cluster, tmp_path, curve):
    c = own_cluster(n=2, curve=curve)
    gate = Gate(tmp_path)
    rc = zfarm.Client(c.connection_file)
    try:
        rc.wait_for_engines(2, timeout=WAIT)
        engine_pids = [p.pid for p in c.engines]
        old = wait_until(lambda: rc.incarnation, what="a Welcome")
        lv = rc.load_balanced_view()
        ar = lv.map(gated, range(10), [gate.path] * 10, chunksize=1)
        wait_until(lambda: rc.queue_status()["pending"] == 10, what="the tasks at the broker")
        c.restart_broker()
        wait_until(lambda: rc.incarnation != old, what="the new incarnation")
        with pytest.raises(zfarm.CompositeError) as info:
            ar.get(timeout=WAIT)
        assert len(info.value.errors) == 10
        assert all(isinstance(e, zfarm.TaskLost) for e in info.value.errors)
        gate.open()  # the old tasks finish; the new broker drops their results
        ids = rc.wait_for_engines(2, timeout=WAIT)
        assert all(pid_alive(p) for p in engine_pids)  # the same engines came back
        assert sorted(int(e["host"].rsplit(":", 1)[1]) for e in rc.queue_status()["engines"]) == sorted(engine_pids)
        assert lv.map_sync(lambda x: x + 1, range(100)) == list(range(1, 101))
        assert len(ids) == 2
    finally:
        rc.close()


def test_a_new_client_of_the_same_session_gets_the_missed_results(own_cluster, tmp_path):
    c = own_cluster(n=2)
    gate = Gate(tmp_path)
    first = zfarm.Client(c.connection_file)
    try:
        first.wait_for_engines(2, timeout=WAIT)
        ar = first.load_balanced_view().map(gated, range(20), [gate.path] * 20, chunksize=2)
        ids = list(ar.task_ids)
        session = first.session
    finally:
        first.detach()
    with pytest.raises(zfarm.CompositeError) as info:
        ar.get(timeout=WAIT)  # ended locally; the tasks go on
    assert all(isinstance(e, zfarm.TaskAborted) for e in info.value.errors)
    gate.open()
    with zfarm.Client(c.connection_file, session=session) as second:
        assert second.session == session
        # Resent because they were never acknowledged: they arrive unasked.
        wait_until(lambda: set(second.unclaimed) >= set(ids), what="the resent results")
        got = second.get_result(ids).get(timeout=WAIT)
        assert [x for chunk in got for x in chunk] == [x * x for x in range(20)]
        assert second.unclaimed == []
        assert second.get_result(ids[0]).get(timeout=WAIT) == [0, 1]  # still there: fetched again
        # Every result was acknowledged (in batches): none waits in the broker.
        wait_until(lambda: second.queue_status()["stored_results"] == 0, what="every result acknowledged")


def test_get_result_from_another_client(cluster, tmp_path):
    gate = Gate(tmp_path)
    with cluster.connect(timeout=WAIT) as one, cluster.connect(timeout=WAIT) as two:
        lv = one.load_balanced_view()
        done = lv.apply_async(divmod, 17, 5)
        assert done.get(timeout=WAIT) == (3, 2)
        pending = lv.apply_async(gated, 6, gate.path)
        assert one.session != two.session
        assert two.get_result(done.task_ids[0]).get(timeout=WAIT) == (3, 2)
        one.queue_status()  # answered after the Submit: the broker knows the task now
        later = two.get_result(pending.task_ids)
        two.abort()  # its own tasks only: the fetched one is another client's
        gate.open()
        assert later.get(timeout=WAIT) == [36]
        assert pending.get(timeout=WAIT) == 36
        with pytest.raises(zfarm.TaskRejected):
            two.get_result(12345).get(timeout=WAIT)


def test_two_clients_share_the_engines(cluster):
    with cluster.connect(timeout=WAIT) as one, cluster.connect(timeout=WAIT) as two:
        results = {}

        def run(name, rc):
            def tagged(x):
                import os as _os
                import time as _time

                _time.sleep(0.002)
                return name, x, _os.getpid()

            ar = rc.load_balanced_view().map(tagged, range(300), chunksize=1)
            results[name] = (ar.get(timeout=WAIT), ar)

        threads = [threading.Thread(target=run, args=(n, r)) for n, r in (("one", one), ("two", two))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert set(results) == {"one", "two"}
        for name, (got, ar) in results.items():
            assert [(n, x) for n, x, _ in got] == [(name, x) for x in range(300)]
        engines = {pid for got, _ in results.values() for *_, pid in got}
        assert engines == {p.pid for p in cluster.engines}
        assert one.outstanding == two.outstanding == 0
