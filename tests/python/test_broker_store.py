"""The broker's result store through real sockets: Hello and Welcome, a result
resent to a reconnected session, Ack, Fetch.  Raw client cores speak the
protocol directly, so these tests do not depend on the Python client's use of it."""
from __future__ import annotations

import json
import time
from typing import Any, List, Tuple

from zfarm import _core, _serialize
from conftest import TEST_HEARTBEAT_MS, WAIT

HEARTBEAT, SUBMIT, RESULT, STATUS, STATUS_REPLY = 3, 4, 6, 7, 8
HELLO, ACK, FETCH, WELCOME = 11, 14, 15, 17
REJECTED = 4


class Peer:
    """A raw client core that keeps what it read until a test asks for that type."""

    def __init__(self, endpoint: str):
        self.core = _core.Core(endpoint)
        self.backlog: List[Tuple] = []

    def send(self, *args: Any) -> None:
        self.core.send(*args)

    def wait_for(self, mtype: int, count: int = 1) -> List[Tuple]:
        """The next `count` messages of type `mtype`."""
        deadline = time.monotonic() + WAIT
        while sum(m[0] == mtype for m in self.backlog) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"waited {WAIT} s for {count} messages of type {mtype}, have {self.backlog}"
            self.backlog += self.core.recv(int(min(left, 1.0) * 1000))
        got = [m for m in self.backlog if m[0] == mtype][:count]
        self.backlog = [m for m in self.backlog if not any(m is g for g in got)]
        return got

    def status(self) -> dict:
        self.send(STATUS, 77, [], 0, "", [])
        return _core.decode_msgpack(self.wait_for(STATUS_REPLY)[0][5][0])

    def close(self) -> None:
        self.core.close()


def answer_of(task_frames: List[Any]) -> Any:
    kind, value, _out, _err = _serialize.loads([bytes(f) for f in task_frames])
    assert kind == "ok"
    return value


def test_reconnected_session_gets_its_unacknowledged_result_and_others_can_fetch_it(own_cluster):
    c = own_cluster(n=1, broker_args=["--result-cache-bytes", "1000000", "--max-unacked-bytes", "10000000"])
    with open(c.connection_file) as f:
        endpoint = json.load(f)["client"]
    first = Peer(endpoint)
    second = third = None
    try:
        # Welcome names the broker run, its engines and the heartbeat.
        deadline = time.monotonic() + WAIT
        while True:
            first.send(HELLO, 1, [], 0, "test", [], {"session": "store-test"})
            welcome = first.wait_for(WELCOME)[0]
            if welcome[6] == [0] or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the engine has not registered yet
        incarnation = welcome[4]
        assert len(incarnation) == 32
        assert welcome[6] == [0]
        assert welcome[2] == TEST_HEARTBEAT_MS
        first.send(HEARTBEAT, 2, [], 0, "", [])
        assert first.wait_for(WELCOME)[0][4] == incarnation

        task = _serialize.dumps(("apply", _serialize.dumps_function(lambda: 6 * 7), (), {}))
        first.send(SUBMIT, 1000, [-1], 0, "", task)
        result = first.wait_for(RESULT)[0]
        assert result[1] == 1000 and answer_of(result[5]) == 42
        first.close()  # gone without acknowledging

        # The same session on a new socket: Welcome, then the result again.
        second = Peer(endpoint)
        second.send(HELLO, 3, [], 0, "test", [], {"session": "store-test"})
        assert second.wait_for(WELCOME)[0][4] == incarnation
        again = second.wait_for(RESULT)[0]
        assert again[1] == 1000 and answer_of(again[5]) == 42
        st = second.status()
        assert st["stored_results"] == 1 and st["incarnation"] == incarnation

        second.send(ACK, 0, [], 0, "", [], {"ids": [1000]})
        deadline = time.monotonic() + WAIT
        while second.status()["stored_results"] != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        st = second.status()
        assert (st["stored_results"], st["cached_results"], st["results_evicted"]) == (0, 1, 0)

        # Anyone may fetch it from the cache; an unknown id is refused.
        third = Peer(endpoint)
        third.send(FETCH, 0, [], 0, "", [], {"ids": [1000, 999]})
        fetched = {m[1]: m for m in third.wait_for(RESULT, 2)}
        assert answer_of(fetched[1000][5]) == 42
        assert fetched[999][2] == REJECTED
        assert fetched[999][4] == "no result for task 999"
    finally:
        for peer in (first, second, third):
            if peer is not None:
                peer.close()
