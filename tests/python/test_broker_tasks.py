"""The broker's task options through the real zfarm-broker, at the wire level.

A raw client core talks to a broker with no engines (so tasks stay queued),
then engines come and go.  The Python task interface is tested elsewhere.
"""
from __future__ import annotations

import time

from zfarm import _core
from zfarm._cluster import read_connection_file

from conftest import WAIT

SUBMIT, RESULT, HELLO, ABORT, EVENT = 4, 6, 11, 12, 16
ABORTED, TIMED_OUT, IMPOSSIBLE = 3, 5, 7


class Wire:
    """A client core that keeps every message it has received."""

    def __init__(self, endpoint: str):
        self.core = _core.Core(endpoint)
        self.got: list = []

    def wait_for(self, match):
        """The first received message for which match(msg) holds."""
        deadline = time.monotonic() + WAIT
        while True:
            for m in self.got:
                if match(m):
                    return m
            left = deadline - time.monotonic()
            assert left > 0, f"no matching message; received {[m[:5] for m in self.got]}"
            self.got.extend(self.core.recv(int(min(left, 0.2) * 1000)))

    def result(self, task_id: int):
        return self.wait_for(lambda m: m[0] == RESULT and m[1] == task_id)


def test_timeout_abort_impossible_and_events_through_the_broker(own_cluster):
    c = own_cluster(n=0)
    wire = Wire(read_connection_file(c.connection_file)["client"])
    try:
        wire.core.send(HELLO, 0, [], 0, "", [])
        # No engine: the task stays queued until its deadline.
        wire.core.send(SUBMIT, 1, [-1], 0, "", [b"x"], {"timeout_ms": 100})
        assert wire.result(1)[2] == TIMED_OUT

        # A blocked dependent of an aborted task can never run.
        wire.core.send(SUBMIT, 2, [-1], 0, "", [b"x"])
        wire.core.send(SUBMIT, 3, [-1], 0, "", [b"x"], {"after": [2]})
        wire.core.send(ABORT, 0, [], 0, "", [], {"ids": [2]})
        assert wire.result(2)[2] == ABORTED
        r3 = wire.result(3)
        assert r3[2] == IMPOSSIBLE and "task 2" in r3[4]

        # Restricted to engines that do not exist.
        wire.core.send(SUBMIT, 4, [-1], 0, "", [b"x"], {"engines": [5]})
        assert wire.result(4)[2] == IMPOSSIBLE

        # Engines joining and leaving are announced.
        c.add_engines(1)
        joined = wire.wait_for(lambda m: m[0] == EVENT and m[2] == 0)
        assert joined[3] == 0 and ":" in joined[4]
        engine = c.engines[0]
        engine.terminate()
        engine.wait(timeout=WAIT)
        left = wire.wait_for(lambda m: m[0] == EVENT and m[2] == 1)
        assert left[3] == 0
    finally:
        wire.core.close()
