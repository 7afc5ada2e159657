"""How results reach an AsyncResult on the client's fast paths: the small
result table, Results from the core as 6-tuples (first frame as bytes), the
one-task submit, and the lists an AsyncResult makes only on first use."""
from __future__ import annotations

import concurrent.futures
import pickle
import signal
import threading

import pytest

import zfarm
from zfarm import _asyncresult, _client, _core, _serialize
from zfarm._errors import STATUS_OK, STATUS_REMOTE_ERROR
from conftest import WAIT
from test_client_session import bare, ok_frames  # noqa: F401 - the fixture


def test_values_in_and_out_of_the_small_result_table_come_back_each_once(rc):
    lv = rc.load_balanced_view()
    values = [None, True, False, 0, 7, 256, 257, -8, -9, 2.5, "s", (1, 2)]
    ars = [lv.apply_async(lambda v=v: v) for v in values]
    assert [ar.get(timeout=WAIT) for ar in ars] == values
    assert [type(ar.get(timeout=WAIT)) for ar in ars] == [type(v) for v in values]  # True is not 1
    assert all(ar.engine_id in rc.ids for ar in ars)
    # With output the result is not a table entry; the output comes with it.
    def shout_and_return(value):  # a closure: pickled by value for the engine
        print("said", value)
        return value

    ar = lv.apply_async(shout_and_return, 3)
    assert ar.get(timeout=WAIT) == 3 and ar.stdout == "said 3\n"


def test_a_remote_error_through_the_fast_path_carries_its_traceback(rc):
    def raise_key_error():  # a closure: pickled by value for the engine
        raise KeyError("missing")

    ar = rc.load_balanced_view().apply_async(raise_key_error)
    with pytest.raises(zfarm.RemoteError) as info:
        ar.get(timeout=WAIT)
    assert info.value.ename == "KeyError" and "raise_key_error" in info.value.traceback
    assert ar.done() and not ar.successful()


def test_a_large_result_and_a_first_frame_over_the_bytes_limit_decode(rc):
    # A pickle over 4 KiB reaches Python as a Frame, not bytes.
    text = "x" * 100_000
    assert rc.load_balanced_view().apply_async(str.__mul__, "x", 100_000).get(timeout=WAIT) == text


def test_decode_outcome_reads_table_entries_and_other_buffers_alike():
    small = pickle.dumps(("ok", 5, "", ""), protocol=_serialize.PROTOCOL)
    from_table = _asyncresult.decode_outcome(1, STATUS_OK, 3, "", [small])
    from_view = _asyncresult.decode_outcome(1, STATUS_OK, 3, "", [memoryview(small)])
    assert (from_table.ok, from_table.value, from_table.engine_id) == (True, 5, 3)
    assert (from_view.ok, from_view.value, from_view.engine_id, from_view.stdout) == (True, 5, 3, "")
    printed = _asyncresult.decode_outcome(1, STATUS_OK, 0, "", [pickle.dumps(("ok", None, "hi\n", ""), protocol=5)])
    assert printed.value is None and printed.stdout == "hi\n"
    error = _asyncresult.decode_outcome(2, STATUS_REMOTE_ERROR, 1, "", _serialize.dumps(
        ("error", {"ename": "ValueError", "evalue": "v", "traceback": "Traceback: here"}, "", "")))
    assert not error.ok and isinstance(error.value, zfarm.RemoteError)
    assert error.value.traceback == "Traceback: here" and error.value.engine_id == 1


def test_done_callbacks_and_waiters_before_and_after_the_end(bare):
    ar = bare.load_balanced_view().apply_async(abs, -2)
    called = []
    ar.add_done_callback(lambda f: called.append(("before", f.result())))
    got = []
    waiter = threading.Thread(target=lambda: got.append(concurrent.futures.wait([ar], timeout=WAIT)))
    waiter.start()
    blocked = threading.Thread(target=lambda: got.append(ar.get(timeout=WAIT)))
    blocked.start()
    bare._on_results([(_client.MSG_RESULT, ar.task_ids[0], 0, 0, "", ok_frames(2), None, None, None)])
    waiter.join(WAIT)
    blocked.join(WAIT)
    assert not waiter.is_alive() and not blocked.is_alive()
    done_sets = [g for g in got if isinstance(g, tuple)]
    assert len(done_sets) == 1 and ar in done_sets[0].done
    assert 2 in got
    ar.add_done_callback(lambda f: called.append(("after", f.result())))
    assert called == [("before", 2), ("after", 2)]
    # A second copy changes nothing.
    bare._on_results([(_client.MSG_RESULT, ar.task_ids[0], 0, 0, "", ok_frames(99), None, None, None)])
    assert ar.get(timeout=0) == 2 and called == [("before", 2), ("after", 2)]


def test_a_result_for_a_future_cancelled_through_the_future_api_is_dropped_quietly(bare):
    ar = bare.load_balanced_view().apply_async(abs, -2)
    assert concurrent.futures.Future.cancel(ar)  # the plain Future's cancel, not AsyncResult.cancel
    bare._on_results([(_client.MSG_RESULT, ar.task_ids[0], 0, 0, "", ok_frames(2), None, None, None)])
    assert ar.cancelled() and bare.outstanding == 0


def test_a_batch_of_many_results_resolves_each_task_once_with_its_own_value(bare):
    lv = bare.load_balanced_view()
    ars = [lv.apply_async(abs, -i) for i in range(1000)]
    ended = []
    for ar in ars:
        ar.add_done_callback(ended.append)
    batch = [(_client.MSG_RESULT, ar.task_ids[0], 0, 0, "", ok_frames(i), None, None, None) for i, ar in enumerate(ars)]
    bare._on_results(batch + batch[:10])  # the copies at the end are ignored
    assert [ar.get(timeout=0) for ar in ars] == list(range(1000))
    assert len(ended) == 1000 and len({id(a) for a in ended}) == 1000
    assert bare.outstanding == 0 and bare.unclaimed == []


def test_a_second_copy_is_recognised_across_a_turn_of_the_recent_ids(bare, monkeypatch):
    monkeypatch.setattr(_client, "RECENT_IDS", 4)
    lv = bare.load_balanced_view()
    ars = [lv.apply_async(abs, -i) for i in range(6)]
    for i, ar in enumerate(ars):
        bare._on_results([(_client.MSG_RESULT, ar.task_ids[0], 0, 0, "", ok_frames(i), None, None, None)])
    # The first four moved to the older generation; all six are still known.
    bare._on_results([(_client.MSG_RESULT, ar.task_ids[0], 0, 0, "", ok_frames(-1), None, None, None) for ar in ars])
    assert bare.unclaimed == []
    assert [ar.get(timeout=0) for ar in ars] == list(range(6))


def test_the_one_task_submit_refuses_an_oversized_frame_and_forgets_the_task(rc):
    lv = rc.load_balanced_view()
    limit = rc._core.max_message_bytes
    rc._core.max_message_bytes = 1000
    try:
        with pytest.raises(ValueError, match="exceeds the broker's limit"):
            lv.apply_async(len, b"x" * 5000)
        assert rc.outstanding == 0
    finally:
        rc._core.max_message_bytes = limit
    assert lv.apply_async(len, b"x" * 5000).get(timeout=WAIT) == 5000


def test_the_one_task_submit_takes_any_buffer_as_a_frame(rc):
    # Core.submit copies bytes directly and sends other buffers the general way.
    frame = bytearray(pickle.dumps(("apply", _serialize.dumps_function(abs), (-4,), {}), protocol=5))
    ar = _asyncresult.AsyncResult(rc, 1, single=True, label="apply")
    rc._submit_one([_client.LOAD_BALANCED], [frame], None, ar)
    assert ar.get(timeout=WAIT) == 4


def test_calls_without_arguments_reuse_one_pickle_per_function():
    fn = _serialize.dumps_function(len)
    first = _serialize.dumps_call(fn, (), {})
    assert _serialize.dumps_call(fn, (), {})[0] is first[0]
    assert _serialize.loads(first) == ("apply", fn, (), {})
    assert _serialize.loads(_serialize.dumps_call(fn, (1,), {"a": 2})) == ("apply", fn, (1,), {"a": 2})


def test_apply_payloads_of_functions_by_reference_are_reused_and_lambdas_pickled_each_time():
    first = _serialize.dumps_apply(len, (), {})
    assert _serialize.dumps_apply(len, (), {})[0] is first[0]
    assert _serialize.loads(first) == ("apply", _serialize.dumps_function(len), (), {})
    assert _serialize.loads(_serialize.dumps_apply(len, ("ab",), {}))[2] == ("ab",)
    counter = [0]

    def by_value():  # a closure: what it captures may change between calls
        return counter[0]

    one = _serialize.dumps_apply(by_value, (), {})
    counter[0] = 5
    two = _serialize.dumps_apply(by_value, (), {})
    assert one[0] != two[0]


def test_threads_waiting_on_different_results_each_get_their_own(bare):
    # All results share one lock; each waits on its own condition.
    lv = bare.load_balanced_view()
    ars = [lv.apply_async(abs, -i) for i in range(8)]
    got = {}
    started = threading.Barrier(len(ars) + 1, timeout=WAIT)

    def wait_for(i, ar):
        started.wait()
        got[i] = ar.get(timeout=WAIT)

    threads = [threading.Thread(target=wait_for, args=(i, ar)) for i, ar in enumerate(ars)]
    for t in threads:
        t.start()
    started.wait()
    for i in reversed(range(len(ars))):  # out of order, one at a time
        bare._on_results([(_client.MSG_RESULT, ars[i].task_ids[0], 0, 0, "", ok_frames(i * 10), None, None, None)])
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert got == {i: i * 10 for i in range(len(ars))}


def test_latch_waits_until_fired_or_timed_out():
    latch = _core.Latch()
    assert not latch.fired
    assert latch.wait(0.01) is False  # not fired: the timeout ends it
    waiter_saw = []
    t = threading.Thread(target=lambda: waiter_saw.append(latch.wait(None)))
    t.start()
    latch.fire()
    t.join(WAIT)
    assert not t.is_alive() and waiter_saw == [True]
    assert latch.fired and latch.wait(0) is True  # it stays fired


def test_a_thread_waiting_on_a_latch_still_gets_ctrl_c():
    latch = _core.Latch()
    main = threading.get_ident()
    timer = threading.Timer(0.2, signal.pthread_kill, args=(main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            latch.wait(WAIT)
    finally:
        timer.cancel()
    assert not latch.fired


def test_latches_handed_to_the_core_fire_on_its_next_receive_or_close():
    core = _core.Core("tcp://127.0.0.1:9")  # nobody there: recv returns nothing
    try:
        first, second = _core.Latch(), _core.Latch()
        core.fire_later(first)
        assert not first.fired  # kept until the receiver lets go of the GIL
        assert core.recv(0, 1) == []
        assert first.fired
        core.fire_later(second)
        core.close()
        assert second.fired  # a closing core wakes whoever still waits
    finally:
        core.close()


def test_a_result_ended_on_another_thread_wakes_its_waiter_at_once(bare):
    # Ended outside the receiver thread (here the test's own), the latch
    # fires immediately instead of waiting for the next receive.
    ar = bare.load_balanced_view().apply_async(abs, -1)
    got = []
    waiting = threading.Event()

    def wait():
        waiting.set()
        got.append(ar.get(timeout=WAIT))

    t = threading.Thread(target=wait)
    t.start()
    waiting.wait(WAIT)
    bare._on_results([(_client.MSG_RESULT, ar.task_ids[0], 0, 0, "", ok_frames(1), None, None, None)])
    t.join(WAIT)
    assert not t.is_alive() and got == [1]
