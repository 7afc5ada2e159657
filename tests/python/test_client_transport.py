"""The client's transport: a socket shared by the submitting threads and the
receiver thread, results handled in batches."""
from __future__ import annotations

import os
import signal
import threading

import pytest

import zfarm
from zfarm import _client, _serialize
from zfarm._errors import STATUS_ABORTED, STATUS_REMOTE_ERROR
from conftest import WAIT, Gate, gated, wait_until
from test_client_session import bare, ok_frames  # noqa: F401 - the fixture

# The last three items of a Result from the core (started, run time,
# received): none here.
NO_TIMING = (None, None, None)


def test_a_burst_of_results_each_reach_their_own_task(rc):
    lv = rc.load_balanced_view()

    def fn(i):  # a closure: sent by value
        if i % 7 == 3:
            raise ValueError(f"task {i} fails")
        return i * 10

    ars = [lv.apply_async(fn, i) for i in range(3000)]
    for i, ar in enumerate(ars):
        if i % 7 == 3:
            with pytest.raises(zfarm.RemoteError, match=f"task {i} fails"):
                ar.get(timeout=WAIT)
        else:
            assert ar.get(timeout=WAIT) == i * 10
    assert rc.outstanding == 0


def test_threads_submitting_at_once_each_get_their_own_results(rc):
    lv = rc.load_balanced_view()
    got = {}

    def work(k):
        ars = [lv.apply_async(lambda a, b: (a, b), k, j) for j in range(300)]
        got[k] = [ar.get(timeout=WAIT) for ar in ars]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert got == {k: [(k, j) for j in range(300)] for k in range(4)}


def test_round_trips_one_after_another(rc):
    # Each reply must wake the receiver, however the send before it
    # interleaved with the receiver going to sleep.
    lv = rc.load_balanced_view()
    for i in range(300):
        assert lv.apply_async(abs, -i).get(timeout=WAIT) == i


def test_close_while_get_waits_ends_the_wait_with_an_error(cluster, tmp_path):
    gate = Gate(tmp_path)
    rc = cluster.connect(timeout=WAIT)
    ar = rc.load_balanced_view().apply_async(gated, 2, gate.path)
    outcome = []

    def waiter():
        try:
            outcome.append(ar.get(timeout=WAIT))
        except BaseException as exc:  # noqa: BLE001 - what the test looks at
            outcome.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    try:
        rc.close()
        t.join(WAIT)
        assert not t.is_alive(), "get() still waits after close()"
        assert len(outcome) == 1 and isinstance(outcome[0], zfarm.TaskAborted)
    finally:
        gate.open()
        t.join(WAIT)


def test_a_batch_of_results_is_handled_in_order_each_to_its_task(bare):
    lv = bare.load_balanced_view()
    a, b, c = (lv.apply_async(abs, i) for i in range(3))
    ida, idb, idc = a.task_ids[0], b.task_ids[0], c.task_ids[0]
    bare._on_welcome("inc-1", [0, 1], 1000)
    stray = idc + 100
    bare._on_results([
        (_client.MSG_RESULT, idb, 0, 1, "", ok_frames("b"), *NO_TIMING),
        (_client.MSG_RESULT, stray, 0, 0, "", ok_frames("nobody's"), *NO_TIMING),
        (_client.MSG_RESULT, ida, STATUS_ABORTED, -1, "gone", [], *NO_TIMING),
        (_client.MSG_RESULT, idb, 0, 1, "", ok_frames("b again"), *NO_TIMING),  # a second copy: ignored
        (_client.MSG_RESULT, idc, STATUS_REMOTE_ERROR, 0, "",
         _serialize.dumps(("error", {"ename": "KeyError", "evalue": "k"}, "", "")), *NO_TIMING),
    ])
    assert b.get(timeout=WAIT) == "b" and b.engine_id == 1
    with pytest.raises(zfarm.TaskAborted, match="gone"):
        a.get(timeout=WAIT)
    with pytest.raises(zfarm.RemoteError, match="KeyError"):
        c.get(timeout=WAIT)
    assert bare.unclaimed == [stray]
    assert bare.outstanding == 0
    # Acknowledged in arrival order, the second copy too.
    assert bare._to_ack == [idb, stray, ida, idb, idc]


def test_a_pending_result_is_a_future_to_wait_on_from_other_threads(bare):
    import concurrent.futures

    ar = bare.load_balanced_view().apply_async(abs, -1)
    with pytest.raises(zfarm.TimeoutError):
        ar.get(timeout=0.01)
    done, not_done = concurrent.futures.wait([ar], timeout=0.01)
    assert not done and not_done == {ar}
    got = []
    waiters = [threading.Thread(target=lambda: got.append(ar.result(timeout=WAIT))) for _ in range(3)]
    for t in waiters:
        t.start()
    with ar._cond:  # the progress condition shares the future's lock
        assert not ar.done()
    bare._on_results([(_client.MSG_RESULT, ar.task_ids[0], 0, 0, "", ok_frames(1), *NO_TIMING)])
    for t in waiters:
        t.join(WAIT)
        assert not t.is_alive()
    assert got == [1, 1, 1]
    assert concurrent.futures.wait([ar], timeout=WAIT).done == {ar}


def _open_when_claimed(rc, gate):
    """A thread that opens ``gate`` once a get() reads the client's socket."""

    def run():
        wait_until(lambda: rc._core.claimed, what="a get() reading the socket")
        gate.open()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_waiting_get_reads_its_result_on_its_own_thread(cluster, tmp_path):
    # The reply wakes the waiting thread, not the receiver thread: the
    # result is delivered (its done callback runs) on the thread in get().
    gate = Gate(tmp_path)
    rc = cluster.connect(timeout=WAIT)
    try:
        ar = gate.hold(rc.load_balanced_view(), 3, "a")
        ran_on = []
        ar.add_done_callback(lambda _: ran_on.append(threading.current_thread()))
        opener = _open_when_claimed(rc, gate)
        assert ar.get(timeout=WAIT) == 9
        opener.join(WAIT)
        assert ran_on == [threading.current_thread()]
        assert not rc._core.claimed  # handed back
    finally:
        gate.open()
        rc.close()


def test_after_a_get_the_receiver_thread_delivers_again(rc, monkeypatch):
    # Each get() takes the socket and gives it back: results nobody waits
    # for in get() must still wake the receiver thread.  It also wakes by
    # itself every RECV_TIMEOUT_MS, which would hide a socket not given
    # back: longer than the test's waits here.
    monkeypatch.setattr(_client, "RECV_TIMEOUT_MS", int(10 * WAIT * 1000))
    lv = rc.load_balanced_view()
    assert lv.apply_async(abs, 0).get(timeout=WAIT) == 0  # the receiver's last short wait has ended
    for i in range(50):
        assert lv.apply_async(abs, -i).get(timeout=WAIT) == i
        done = threading.Event()
        ran_on = []

        def note(_, ran_on=ran_on, done=done):
            ran_on.append(threading.current_thread().name)
            done.set()

        lv.apply_async(abs, -i).add_done_callback(note)
        assert done.wait(WAIT), f"round {i}: a result not waited for in get() never arrived"
        assert ran_on == ["zfarm-receiver"]


def test_ctrl_c_in_a_get_that_reads_the_socket(cluster, tmp_path):
    gate = Gate(tmp_path)
    rc = cluster.connect(timeout=WAIT)
    main = threading.get_ident()

    def interrupt():
        wait_until(lambda: rc._core.claimed, what="a get() reading the socket")
        signal.pthread_kill(main, signal.SIGINT)

    try:
        ar = gate.hold(rc.load_balanced_view(), 4, "a")
        t = threading.Thread(target=interrupt)
        t.start()
        with pytest.raises(KeyboardInterrupt):
            ar.get(timeout=WAIT)
        t.join(WAIT)
        assert not rc._core.claimed and not ar.done()
        # The receiver thread has the socket again: the result still comes.
        done = threading.Event()
        ar.add_done_callback(lambda _: done.set())
        gate.open()
        assert done.wait(WAIT)
        assert ar.get(timeout=WAIT) == 16
    finally:
        gate.open()
        rc.close()


def test_two_threads_in_get_each_get_their_result(cluster, tmp_path):
    # One of them reads the socket; the other waits for it to deliver.
    gates = [Gate(tmp_path / n) for n in ("a", "b")]
    for g in gates:
        os.mkdir(g.folder)
    rc = cluster.connect(timeout=WAIT)
    try:
        ars = [g.hold(rc[e], x, "t") for g, e, x in zip(gates, rc.ids[:2], (5, 6))]
        got = {}
        threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, ars[i].get(timeout=WAIT))) for i in (0, 1)]
        for t in threads:
            t.start()
        wait_until(lambda: rc._core.claimed, what="a get() reading the socket")
        gates[1].open()  # whichever thread reads, the other's result first
        wait_until(lambda: 1 in got, what="the second thread's result")
        gates[0].open()
        for t in threads:
            t.join(WAIT)
        assert not any(t.is_alive() for t in threads)
        assert got == {0: 25, 1: 36}
    finally:
        for g in gates:
            g.open()
        rc.close()


def test_ctrl_c_while_a_get_handles_a_batch_is_held_until_it_is_handled(cluster, tmp_path):
    # The waiting main thread runs done callbacks as it delivers; Ctrl-C
    # landing there must not cut the delivery short (results would be lost):
    # KeyboardInterrupt comes once the batch is handled and the socket given back.
    gate = Gate(tmp_path)
    rc = cluster.connect(timeout=WAIT)
    try:
        lv = rc.load_balanced_view()
        ar = gate.hold(lv, 2, "a")
        after_signal = []

        def interrupt_here(_):
            signal.raise_signal(signal.SIGINT)  # its handler runs at the next bytecode
            after_signal.append(threading.current_thread())

        ar.add_done_callback(interrupt_here)
        opener = _open_when_claimed(rc, gate)
        with pytest.raises(KeyboardInterrupt):
            ar.get(timeout=WAIT)
        opener.join(WAIT)
        assert after_signal == [threading.current_thread()]  # the callback ran to its end
        assert ar.get(timeout=0) == 4
        assert not rc._core.claimed
        assert lv.apply_async(abs, -5).get(timeout=WAIT) == 5
        with pytest.raises(KeyboardInterrupt):  # outside get(), Ctrl-C is not held back
            signal.raise_signal(signal.SIGINT)
    finally:
        gate.open()
        rc.close()
