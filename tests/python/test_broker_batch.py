"""Batches (protocol revision 4) through the real zfarm-broker and engines.

A raw pyzmq client speaks the wire protocol itself: it names revision 4 in
Hello, sends its Submits in one Batch, and takes Results alone or in
Batches, as the broker chooses.  docs/protocol.rst, "Batch".
"""
from __future__ import annotations

import time

import msgpack
import zmq

from zfarm import _serialize
from zfarm._cluster import read_connection_file

from conftest import WAIT
from test_batch import batch, unpack  # the tests' own Batch writer and reader

SIGNATURE = b"ZFRM\x01"
SUBMIT, RESULT, STATUS, STATUS_REPLY, ERROR, HELLO, WELCOME, BATCH = 4, 6, 7, 8, 10, 11, 17, 20


def header(type_: int, id_: int = 0, targets=(), aux: int = 0, opts=None) -> bytes:
    items = [type_, id_, list(targets), 0, aux, ""]
    if opts:
        items.append(opts)
    return msgpack.packb(items)


class RawClient:
    """A DEALER that keeps every message it received, Batches unpacked (as
    lists of frames without the signature: header, payload ...)."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)
        self.got: list = []  # (header list, payload frames)
        self.batches = 0

    def send(self, frames) -> None:
        self.sock.send_multipart(frames)

    def wait_for(self, match, count: int = 1) -> list:
        deadline = time.monotonic() + WAIT
        while True:
            hits = [m for m in self.got if match(m)]
            if len(hits) >= count:
                return hits
            left = deadline - time.monotonic()
            assert left > 0, f"{len(hits)} of {count} messages; received {[m[0][:2] for m in self.got]}"
            if self.sock.poll(int(min(left, 0.2) * 1000)):
                frames = self.sock.recv_multipart()
                assert frames[0] == SIGNATURE
                h = msgpack.unpackb(frames[1])
                if h[0] == BATCH:
                    self.batches += 1
                    records = unpack(frames[2], h[4])  # every record read, nothing left over
                    self.got.extend((msgpack.unpackb(r[0]), r[1:]) for r in records)
                else:
                    self.got.append((h, frames[2:]))

    def status(self, request: int) -> dict:
        self.send([SIGNATURE, header(STATUS, request)])
        (reply,) = self.wait_for(lambda m: m[0][0] == STATUS_REPLY and m[0][1] == request)
        return msgpack.unpackb(reply[1][0])

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def test_a_batch_of_submits_runs_every_task_once_and_a_bad_batch_is_refused(own_cluster):
    # A fixed credit of 4: the engines hold several tasks at once, so their
    # Results reach the broker in runs that it may send on as Batches.
    c = own_cluster(n=2, prefetch=4, prefetch_max=4)
    client = RawClient(read_connection_file(c.connection_file)["client"])
    try:
        client.send([SIGNATURE, header(HELLO, 1, opts={"session": "batch-test", "revision": 4})])
        (welcome,) = client.wait_for(lambda m: m[0][0] == WELCOME)
        assert welcome[0][6]["revision"] >= 4

        n = 40
        submits = [[header(SUBMIT, 100 + i, [-1]), *_serialize.dumps_apply(abs, (-i,), {})] for i in range(n)]
        client.send(batch(submits))
        results = client.wait_for(lambda m: m[0][0] == RESULT, count=n)
        assert sorted(r[0][1] for r in results) == [100 + i for i in range(n)]
        for h, payload in results:
            assert h[3] == 0, h  # Ok
            assert _serialize.loads(payload)[:2] == ("ok", h[1] - 100)  # (kind, value, stdout, stderr)

        # A Batch holding a record that is never batched (a Status): refused
        # whole, none of its Submits runs.
        client.send(batch([[header(SUBMIT, 500, [-1]), *_serialize.dumps_apply(abs, (-1,), {})],
                           [header(STATUS, 7)]]))
        (error,) = client.wait_for(lambda m: m[0][0] == ERROR)
        assert "batch" in error[0][5]

        status = client.status(2)
        # Ours, and the engines' Batches of Results if they send any.
        assert status["batches_in"] >= 1
        assert status["batch_records_in"] >= n
        assert status["bad_messages"] == 1
        assert status["pending"] == 0
        assert status["done"] == n  # task 500 never ran
        assert not [m for m in client.got if m[0][0] == RESULT and m[0][1] == 500]
        # The Results that came in Batches are the broker's batch_records_out
        # to this client, the only one (engines of revision 4 get Tasks in
        # Batches too, counted in the same keys).
        assert status["batches_out"] >= client.batches
    finally:
        client.close()
