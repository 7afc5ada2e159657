"""Batch (protocol revision 4) at the engine and the client.

The broker's part is played by the test with a pyzmq ROUTER socket, so it
decides exactly which revision it announces and what arrives as a Batch:
Tasks in Batches to a real engine, Results in Batches to a real client,
malformed Batches to both.
"""
from __future__ import annotations

import json
import pickle
import struct
from typing import Any, Dict, List, Optional, Tuple

import pytest

pytest.importorskip("zmq")  # the fake brokers (test_engine_faults.RouterPeer)

import zfarm  # noqa: E402
from zfarm import _core, _serialize  # noqa: E402

from conftest import WAIT, end_process  # noqa: E402
from test_engine_faults import SIG, RouterPeer, _mp, engine_log, start_engine, stop  # noqa: E402

REGISTER, REGISTER_REPLY, HEARTBEAT, SUBMIT, TASK, RESULT = 1, 2, 3, 4, 5, 6
ERROR, HELLO, WELCOME, BATCH = 10, 11, 17, 20
OK = 0
HEARTBEAT_MS = 200


def header(mtype: int, mid: int = 0, targets=(), status: int = 0, aux: int = 0, text: str = "",
           revision: Optional[int] = None) -> bytes:
    """A header; ``revision`` adds the options map {"revision": n}."""
    items = [_mp(mtype), _mp(mid), _mp(list(targets)), _mp(status), _mp(aux), _mp(text)]
    if revision is not None:
        items.append(b"\x81" + _mp("revision") + _mp(revision))
    return bytes([0x90 | len(items)]) + b"".join(items)


def batch(records: List[List[bytes]], count: Optional[int] = None, tail: bytes = b"") -> List[bytes]:
    """A Batch of records (each a header frame and payload frames), as
    signature, header and body frames; ``count`` and ``tail`` spoil it."""
    body = b""
    for frames in records:
        body += struct.pack(">I", len(frames))
        for f in frames:
            body += struct.pack(">I", len(f)) + f
    return [SIG, header(BATCH, aux=len(records) if count is None else count), body + tail]


def unpack(body: bytes, n: int) -> List[List[bytes]]:
    """The records of a Batch body (the test's own reader)."""
    records, at = [], 0
    for _ in range(n):
        (k,), at = struct.unpack_from(">I", body, at), at + 4
        frames = []
        for _ in range(k):
            (size,), at = struct.unpack_from(">I", body, at), at + 4
            frames.append(body[at:at + size])
            at += size
        records.append(frames)
    assert at == len(body)
    return records


# -- the engine ---------------------------------------------------------------------


class Broker(RouterPeer):
    """The broker's side of the engine protocol, announcing ``revision``."""

    def __init__(self, endpoint: str, revision: Optional[int]):
        super().__init__(endpoint)
        self.revision = revision
        self.engine: Optional[bytes] = None
        self.engine_revision: Optional[int] = None
        self.results: Dict[int, Tuple[int, Any]] = {}  # task id -> (status, value)
        self.order: List[int] = []  # task ids in the order their Results came
        self.batches: List[int] = []  # the size of each Batch of Results received

    def pump(self, until, timeout: float = WAIT) -> None:
        for frames in self.incoming(until, timeout, "the engine"):
            identity, h = frames[0], _core.decode_msgpack(frames[2])
            if h[0] == BATCH:
                records = unpack(frames[3], h[4])
                self.batches.append(len(records))
                for r in records:
                    self.on_message(identity, _core.decode_msgpack(r[0]), r[1:])
            else:
                self.on_message(identity, h, frames[3:])

    def on_message(self, identity: bytes, h: List[Any], payload: List[bytes]) -> None:
        if h[0] == REGISTER:
            self.engine = identity
            self.engine_revision = (h[6] or {}).get("revision") if len(h) > 6 else None
            self.send(header(REGISTER_REPLY, h[1], [], HEARTBEAT_MS, 0, "", self.revision))
        elif h[0] == HEARTBEAT:
            self.send(header(HEARTBEAT))
        elif h[0] == RESULT:
            assert h[1] not in self.results, f"two Results for task {h[1]}"
            value = _serialize.loads(payload)[1] if h[3] == OK else None
            self.results[h[1]] = (h[3], value)
            self.order.append(h[1])

    def send(self, hdr: bytes, *payload: bytes) -> None:
        self.sock.send_multipart([self.engine, SIG, hdr, *payload])

    def send_raw(self, frames: List[bytes]) -> None:
        self.sock.send_multipart([self.engine, *frames])

    def wait_engine(self) -> None:
        self.pump(lambda: self.engine is not None)


def task_record(task_id: int, code: str) -> List[bytes]:
    """A Task record (engine id 0) that runs ``code`` and returns None."""
    return [header(TASK, task_id, [], 0, 0), *_serialize.dumps(("execute", code))]


def value_record(task_id: int, value: int) -> List[bytes]:
    """A Task record whose task returns ``value``."""
    return [header(TASK, task_id, [], 0, 0), *_serialize.dumps(("apply", int, (value,), {}))]


def stop_and_read_log(proc) -> str:
    """Ends the engine and returns its log, the exit summary included."""
    end_process(proc)
    log = engine_log(proc)
    stop(proc)
    return log


@pytest.fixture()
def endpoint(tmp_path):
    return f"ipc://{tmp_path}/engine.sock"


def test_the_engine_announces_revision_4_with_a_fixed_credit_too(endpoint):
    for args in ((), ("--prefetch-max", "2")):  # adaptive; fixed (at --prefetch 2)
        broker = Broker(endpoint, revision=4)
        engine = start_engine(endpoint, *args)
        try:
            broker.wait_engine()
            assert broker.engine_revision == _core.PROTOCOL_REVISION >= 4, args
        finally:
            stop(engine)
            broker.close()


def test_a_batch_of_tasks_gets_every_result_in_order(endpoint):
    broker = Broker(endpoint, revision=4)
    engine = start_engine(endpoint, prefetch=16)
    try:
        broker.wait_engine()
        ids = list(range(100, 116))
        broker.send_raw(batch([value_record(i, i * 3) for i in ids]))
        broker.pump(lambda: len(broker.results) == len(ids))
        assert broker.results == {i: (OK, i * 3) for i in ids}
        assert broker.order == ids  # run, and answered, in the Batch's order
        # An ordinary Task after the Batch still runs.
        broker.send(header(TASK, 200, [], 0, 0), *_serialize.dumps(("apply", int, (7,), {})))
        broker.pump(lambda: 200 in broker.results)
        assert broker.results[200] == (OK, 7)
    finally:
        log = stop_and_read_log(engine)
        broker.close()
    assert "1 batches received" in log


BAD_BATCHES = {
    # n says 2, the body holds 1.
    "count": lambda: batch([task_record(1, "x = 1")], count=2),
    "tail": lambda: batch([task_record(1, "x = 1")], tail=b"\x00"),
    "nested": lambda: batch([[header(BATCH, aux=1), b""]]),
    "heartbeat-record": lambda: batch([task_record(1, "x = 1"), [header(HEARTBEAT)]]),
    "truncated": lambda: [*batch([task_record(1, "x = 1")])[:2], batch([task_record(1, "x = 1")])[2][:-3]],
    "two-frames": lambda: [*batch([task_record(1, "x = 1")]), b"extra"],
}


@pytest.mark.parametrize("make", list(BAD_BATCHES.values()), ids=list(BAD_BATCHES))
def test_a_bad_batch_is_dropped_whole_and_the_engine_goes_on(endpoint, make):
    broker = Broker(endpoint, revision=4)
    engine = start_engine(endpoint)
    try:
        broker.wait_engine()
        # Its task 1 must not run: it would set x, which task 2 returns.
        broker.send_raw(make())
        broker.send_raw(batch([
            task_record(2, "try:\n    y = x\nexcept NameError:\n    y = 'unset'\n"),
            [header(TASK, 3, [], 0, 0), *_serialize.dumps(("pull", "y"))]]))
        broker.pump(lambda: 3 in broker.results)
        assert broker.results[3] == (OK, "unset")
        assert 1 not in broker.results
        assert engine.poll() is None
    finally:
        log = stop_and_read_log(engine)
        broker.close()
    assert "dropped a bad message (" in log
    assert "1 batches received" in log  # the good one


@pytest.mark.parametrize("revision", [None, 3, 4], ids=["rev0", "rev3", "rev4"])
def test_the_engine_sends_results_in_batches_only_to_a_broker_of_revision_4(endpoint, revision):
    broker = Broker(endpoint, revision=revision)
    engine = start_engine(endpoint, prefetch=16)
    try:
        broker.wait_engine()
        ids = list(range(1, 49))
        # Three bursts of 16: sent alone, the engine still reads them
        # together and has the next task queued as each one ends.
        for first in range(0, len(ids), 16):
            for i in ids[first:first + 16]:
                broker.send(header(TASK, i, [], 0, 0), *_serialize.dumps(("apply", int, (i,), {})))
            broker.pump(lambda: len(broker.results) == first + 16)
        assert broker.results == {i: (OK, i) for i in ids}
        assert broker.order == ids
        if revision == 4:
            # Every run of short tasks answers in Batches (a lone Result only
            # at the end of a run, or when a task ran long).
            assert broker.batches and all(2 <= n <= 16 for n in broker.batches)
        else:
            assert broker.batches == []
    finally:
        stop(engine)
        broker.close()


def test_a_lone_task_is_answered_alone(endpoint):
    broker = Broker(endpoint, revision=4)
    engine = start_engine(endpoint)
    try:
        broker.wait_engine()
        for i in range(1, 6):
            broker.send(header(TASK, i, [], 0, 0), *_serialize.dumps(("apply", int, (i,), {})))
            broker.pump(lambda: i in broker.results)  # nothing was queued behind it: no hold
        assert broker.batches == []
    finally:
        stop(engine)
        broker.close()


# -- the client ---------------------------------------------------------------------


class ClientBroker(RouterPeer):
    """The broker's side of the client protocol: Welcome with ``revision``,
    Submits noted, Results written by the test."""

    def __init__(self, tmp_path, revision: Optional[int]):
        endpoint = f"ipc://{tmp_path}/client.sock"
        super().__init__(endpoint)
        self.revision = revision
        self.client: Optional[bytes] = None
        self.hello: Optional[Dict[str, Any]] = None
        self.submits: List[int] = []  # task ids, in order
        self.messages: List[Tuple[int, int]] = []  # (type, records) of each message with Submits
        self.connection_file = str(tmp_path / "connection.json")
        with open(self.connection_file, "w") as f:
            json.dump({"version": 1, "client": endpoint, "engine": endpoint}, f)

    def pump(self, until, timeout: float = WAIT) -> None:
        for frames in self.incoming(until, timeout, "the client"):
            identity, h = frames[0], _core.decode_msgpack(frames[2])
            self.client = identity
            if h[0] == BATCH:
                records = unpack(frames[3], h[4])
                self.messages.append((BATCH, len(records)))
                for r in records:
                    rh = _core.decode_msgpack(r[0])
                    assert rh[0] == SUBMIT
                    self.submits.append(rh[1])
            elif h[0] == SUBMIT:
                self.messages.append((SUBMIT, 1))
                self.submits.append(h[1])
            elif h[0] in (HELLO, HEARTBEAT):
                if h[0] == HELLO:
                    self.hello = h[6] if len(h) > 6 else {}
                self.send(header(WELCOME, h[1], [], HEARTBEAT_MS * 5, 0, "incarnation", self.revision))

    def send(self, hdr: bytes, *payload: bytes) -> None:
        self.sock.send_multipart([self.client, SIG, hdr, *payload])

    def send_raw(self, frames: List[bytes]) -> None:
        self.sock.send_multipart([self.client, *frames])


def result_record(task_id: int, value: Any) -> List[bytes]:
    return [header(RESULT, task_id, [], OK, 0), pickle.dumps(("ok", value, "", ""), protocol=5)]


@pytest.fixture()
def welcomed(tmp_path):
    """A client connected to a ClientBroker of revision 4, welcomed."""
    broker = ClientBroker(tmp_path, revision=4)
    rc = zfarm.Client(broker.connection_file)
    try:
        broker.pump(lambda: broker.hello is not None and rc._core.broker_revision == 4)
        yield broker, rc
    finally:
        rc.close()
        broker.close()


def test_the_client_says_revision_4_in_hello(welcomed):
    broker, _ = welcomed
    assert broker.hello["revision"] == _core.PROTOCOL_REVISION >= 4


def test_a_batch_of_results_ends_each_async_result_with_its_value(welcomed):
    broker, rc = welcomed
    lv = rc.load_balanced_view()
    ars = [lv.apply_async(int, i) for i in range(10)]
    broker.pump(lambda: len(broker.submits) == 10)
    ids = [ar.task_ids[0] for ar in ars]
    assert broker.submits == ids
    broker.send_raw(batch([result_record(t, f"value {i}") for i, t in enumerate(ids)]))
    assert [ar.get(timeout=WAIT) for ar in ars] == [f"value {i}" for i in range(10)]
    assert all(ar.received is not None for ar in ars)
    assert rc._core.batches_received == 1
    assert rc._core.bad_messages == 0
    assert rc.outstanding == 0


@pytest.mark.parametrize("make", [
    lambda ids: batch([result_record(ids[0], "wrong")], count=2),
    lambda ids: batch([result_record(ids[0], "wrong"), [header(HEARTBEAT)]]),
    lambda ids: batch([result_record(ids[0], "wrong")], tail=b"\x00\x00"),
], ids=["count", "heartbeat-record", "tail"])
def test_a_bad_batch_of_results_is_counted_and_ends_nothing(welcomed, make):
    broker, rc = welcomed
    lv = rc.load_balanced_view()
    first, second = lv.apply_async(int, 1), lv.apply_async(int, 2)
    broker.pump(lambda: len(broker.submits) == 2)
    broker.send_raw(make(first.task_ids))
    # Behind the bad Batch on the same socket: once this one has ended, the
    # bad one has been dealt with.
    broker.send_raw(batch([result_record(second.task_ids[0], "second")]))
    assert second.get(timeout=WAIT) == "second"
    assert not first.done()
    assert rc._core.bad_messages == 1
    broker.send(header(RESULT, first.task_ids[0], [], OK, 0), pickle.dumps(("ok", "first", "", ""), protocol=5))
    assert first.get(timeout=WAIT) == "first"


@pytest.mark.parametrize("revision", [None, 3, 4], ids=["rev0", "rev3", "rev4"])
def test_map_sends_its_chunks_in_one_batch_only_to_a_broker_of_revision_4(tmp_path, revision):
    broker = ClientBroker(tmp_path, revision=revision)
    rc = zfarm.Client(broker.connection_file)
    try:
        broker.pump(lambda: broker.hello is not None and rc._welcomed.is_set())
        assert rc._core.broker_revision == (revision or 0)
        ar = rc.load_balanced_view().map(abs, range(-10, 0), chunksize=1)
        broker.pump(lambda: len(broker.submits) == 10)
        assert broker.submits == ar.task_ids
        if revision == 4:
            assert broker.messages == [(BATCH, 10)]
        else:
            assert broker.messages == [(SUBMIT, 1)] * 10
        broker.send_raw(batch([result_record(t, [10 - i]) for i, t in enumerate(ar.task_ids)]))
        assert ar.get(timeout=WAIT) == list(range(10, 0, -1))
    finally:
        rc.close()
        broker.close()
