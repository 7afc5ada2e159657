"""The client's session state machine, fed broker messages directly.

These check what the client does with Welcome, Event and Result messages
(engine ids, restart detection, unclaimed results, acknowledgements)
without depending on which broker features are built."""
from __future__ import annotations

import pytest

import zfarm
from zfarm import _client, _serialize
from zfarm._asyncresult import AsyncResult
from conftest import WAIT


def ok_frames(value):
    return _serialize.dumps(("ok", value, "", ""))


class FakeCore:
    """Stands in for the socket: records what the client sends, receives nothing."""

    def __init__(self, endpoint, curve=None):
        import threading

        self.sent = []
        self._closed = threading.Event()

    def send(self, *m):
        self.sent.append(m)

    def submit(self, task_id, frames, targets=None):
        # The core's shortcut for send(SUBMIT, id, targets or [-1], 0, "", frames).
        self.sent.append((_client.MSG_SUBMIT, task_id, [_client.LOAD_BALANCED] if targets is None else targets, 0,
                          "", frames))

    def send_many(self, messages):
        self.sent.extend(messages)

    def recv(self, timeout_ms, max_batch=0):
        self._closed.wait(timeout_ms / 1000)
        return []

    def fire_later(self, latch):
        latch.fire()  # this fake's receiver ends nothing: nothing to put off

    def fire_kept(self):
        pass

    def claim(self):
        return False  # a waiting get() does not read this fake: it waits on its latch

    def close(self):
        self._closed.set()

    @property
    def closed(self):
        return self._closed.is_set()


@pytest.fixture()
def bare(tmp_path, monkeypatch):
    """A client with no broker: the test plays the broker's part."""
    import json

    path = tmp_path / "connection.json"
    path.write_text(json.dumps({"version": 1, "client": "tcp://127.0.0.1:9", "engine": "tcp://127.0.0.1:9"}))
    monkeypatch.setattr(_client._core, "Core", FakeCore)
    rc = zfarm.Client(str(path))
    rc.sent = rc._core.sent
    try:
        yield rc
    finally:
        rc.close()


def test_welcome_sets_ids_and_events_update_them(bare):
    events = []
    bare.on_event(lambda kind, eid, text: events.append((kind, eid, text)))
    bare._on_message(_client.MSG_WELCOME, 0, 250, 0, "inc-1", [], [4, 2])
    assert bare.incarnation == "inc-1" and bare.heartbeat_ms == 250
    assert bare.ids == [2, 4]  # no round trip
    bare._on_message(_client.MSG_EVENT, 0, _client.EVENT_JOINED, 7, "host:99", [], [])
    bare._on_message(_client.MSG_EVENT, 0, _client.EVENT_LEFT, 2, "heartbeats", [], [])
    assert bare.ids == [4, 7]
    assert events == [("joined", 7, "host:99"), ("left", 2, "heartbeats")]


def test_a_new_incarnation_ends_pending_tasks_as_lost_and_says_hello(bare):
    bare._on_message(_client.MSG_WELCOME, 0, 250, 0, "inc-1", [], [0])
    ar = AsyncResult(bare, 2, label="test")
    with bare._lock:
        for i in range(2):
            task_id = bare._prefix | (10_000 + i)
            bare._pending[task_id] = (ar, i)
            ar.task_ids.append(task_id)
    bare.sent.clear()
    bare._on_message(_client.MSG_WELCOME, 0, 250, 0, "inc-1", [], [0])
    assert not ar.done()  # same broker: nothing happens
    bare._on_message(_client.MSG_WELCOME, 0, 250, 0, "inc-2", [], [])
    with pytest.raises(zfarm.CompositeError) as info:
        ar.get(timeout=WAIT)
    assert all(isinstance(e, zfarm.TaskLost) for e in info.value.errors)
    hello = [m for m in bare.sent if m[0] == _client.MSG_HELLO]
    assert hello and hello[0][6] == {"session": bare.session, "revision": _client._core.PROTOCOL_REVISION}
    assert bare.outstanding == 0


def test_hello_first_then_heartbeats_once_welcomed(bare):
    assert bare.sent[0][0] == _client.MSG_HELLO
    assert bare.sent[0][6] == {"session": bare.session, "revision": _client._core.PROTOCOL_REVISION}
    bare._last_beat = 0
    bare._housekeeping()
    assert bare.sent[-1][0] == _client.MSG_HELLO  # not welcomed yet: Hello again
    bare._on_message(_client.MSG_WELCOME, 0, 250, 0, "inc-1", [], [0])
    bare._last_beat = 0
    bare._housekeeping()
    assert bare.sent[-1][0] == _client.MSG_HEARTBEAT


def test_abort_and_interrupt_messages(bare):
    bare._on_message(_client.MSG_WELCOME, 0, 250, 0, "inc-1", [], [0, 1])
    ar = AsyncResult(bare, 1, single=True, label="t")
    ar.task_ids.append(bare._prefix | 5)
    with bare._lock:
        bare._pending[ar.task_ids[0]] = (ar, 0)
    bare.sent.clear()
    ar.abort()
    assert bare.sent[-1][0] == _client.MSG_ABORT and bare.sent[-1][6] == {"ids": ar.task_ids}
    fetched = bare.get_result(4242)  # maybe another client's task
    bare.sent.clear()
    bare.abort()
    assert bare.sent[-1][6] == {"ids": ar.task_ids}  # not 4242
    bare.interrupt()
    assert bare.sent[-1][0] == _client.MSG_INTERRUPT and bare.sent[-1][2] == [0, 1]
    assert ar.cancel() is True
    kinds = [m[0] for m in bare.sent[-2:]]
    assert kinds == [_client.MSG_ABORT, _client.MSG_INTERRUPT]
    # The task got through before the interrupt: the call still ends cancelled.
    bare._on_message(_client.MSG_RESULT, ar.task_ids[0], 0, 0, "", ok_frames(1), [])
    with pytest.raises(zfarm.TaskAborted):
        ar.get(timeout=0)
    assert ar.cancel() is False


def test_view_flags_reach_the_submit_options(bare):
    bare._on_message(_client.MSG_WELCOME, 0, 250, 0, "inc-1", [], [0, 1, 2])
    lv = bare.load_balanced_view(targets=[1, 2], retries=1)
    dep = AsyncResult(bare, 1, single=True)
    dep.task_ids.append(99)
    bare.sent.clear()
    with lv.temp_flags(timeout=1.5, after=[dep, 98], priority=2):
        lv.apply_async(abs, 1)
    lv.map(abs, range(4), chunksize=2, follow=dep)
    submits = [m for m in bare.sent if m[0] == _client.MSG_SUBMIT]
    assert submits[0][2] == [-1]
    assert submits[0][6] == {"retries": 1, "timeout_ms": 1500, "priority": 2, "engines": [1, 2],
                             "after": [99, 98]}
    assert [m[6] for m in submits[1:]] == [{"retries": 1, "engines": [1, 2], "follow": [99]}] * 2


def test_results_nobody_waits_for_are_kept_for_get_result(bare):
    bare._on_message(_client.MSG_WELCOME, 0, 250, 0, "inc-1", [], [0])
    bare._on_message(_client.MSG_RESULT, 77, 0, 1, "", ok_frames("seventy-seven"), [])
    bare._on_message(_client.MSG_RESULT, 77, 0, 1, "", ok_frames("again"), [])  # a duplicate
    assert bare.unclaimed == [77]
    ar = bare.get_result(77)
    assert ar.get(timeout=0) == "seventy-seven"
    assert ar.engine_id == 1
    assert bare.unclaimed == []


def test_results_are_acknowledged_in_batches(bare):
    bare._on_message(_client.MSG_WELCOME, 0, 250, 0, "inc-1", [], [0])
    bare.sent.clear()
    for i in range(_client.ACK_BATCH + 3):
        bare._on_message(_client.MSG_RESULT, 1000 + i, 0, 0, "", ok_frames(i), [])
    bare._housekeeping()
    acks = [m for m in bare.sent if m[0] == _client.MSG_ACK]
    assert [i for m in acks for i in m[6]["ids"]] == [1000 + i for i in range(_client.ACK_BATCH + 3)]
    assert len(acks) <= 3  # batched (the receiver thread may flush once meanwhile)


def test_get_result_of_a_task_this_client_awaits_shares_its_outcome(rc):
    ar = rc.load_balanced_view().apply_async(abs, -8)
    again = rc.get_result(ar.task_ids[0])
    assert again.get(timeout=WAIT) == 8 == ar.get(timeout=WAIT)


def test_close_ends_every_pending_result_and_detach_says_where_it_went(cluster, tmp_path):
    from conftest import Gate, gated

    gate = Gate(tmp_path)
    rc = cluster.connect(timeout=WAIT)
    ar = rc.load_balanced_view().apply_async(gated, 1, gate.path)
    session = rc.session
    rc.detach()
    gate.open()
    with pytest.raises(zfarm.TaskAborted) as info:
        ar.get(timeout=WAIT)
    assert session in str(info.value)
    assert rc.closed
    with pytest.raises(zfarm.ZfarmError):
        rc.load_balanced_view().apply_async(abs, 1)


def test_client_session_name(cluster):
    with zfarm.Client(cluster.connection_file, session="my-session") as a, \
            zfarm.Client(cluster.connection_file) as b, zfarm.Client(cluster.connection_file) as c:
        assert a.session == "my-session"
        assert b.session != c.session
