"""Client sessions that expire (--session-timeout), with real processes.

A session whose client is gone (no heartbeat) for the timeout, with nothing
pending, is forgotten with its unacknowledged results; a client that is
connected heartbeats and keeps its session however idle it is.  The rule
itself is checked message by message in tests/cpp/test_scheduler_sessions.cpp;
here it is the whole path: broker option, sweep, status counters, and what a
client that comes back gets.

Every wait is bounded (conftest.wait_until); every process is reaped by the
cluster fixture.
"""
from __future__ import annotations

import os
import sys
import time

import cloudpickle
import pytest

import zfarm
from conftest import WAIT, wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Short, so the test is quick; long enough that a client heartbeating every
# 250 ms (the test clusters' interval) on a loaded machine never misses it.
SESSION_TIMEOUT_S = 2.0


def wait_for_file(path: str, timeout: float) -> str:
    """Runs on an engine: ends once `path` exists (bounded)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return "done"


@pytest.fixture()
def expiring(own_cluster):
    return own_cluster(1, broker_args=["--session-timeout", str(SESSION_TIMEOUT_S)])


def status(client) -> dict:
    return client.queue_status(timeout=WAIT)


def test_departed_session_expires_with_its_unacked_result_and_an_idle_client_keeps_its_own(expiring, tmp_path):
    conn = expiring.connection_file
    with zfarm.Client(conn) as observer, zfarm.Client(conn) as idle:
        observer.wait_for_engines(1, timeout=WAIT)
        assert status(observer)["session_timeout_ms"] == int(SESSION_TIMEOUT_S * 1000)
        # A client submits, then leaves before its task ends: the result is
        # stored for its session, unacknowledged, with nobody to take it.
        departed = zfarm.Client(conn, session="departed-session")
        go = tmp_path / "go"
        ar = departed.load_balanced_view().apply_async(wait_for_file, str(go), WAIT)
        task_id = ar.task_ids[0]
        wait_until(lambda: status(observer)["engines"][0]["inflight"] == 1, what="the task running")
        departed.detach()
        go.write_text("go")
        # Stored, then freed with the session once it is silent for the timeout.
        expired = wait_until(lambda: (lambda s: s if s["results_expired"] >= 1 else None)(status(observer)),
                             what="the departed session's result freed")
        assert expired["results_expired"] == 1
        assert expired["stored_results"] == 0
        assert expired["sessions_expired"] == 1  # the departed one alone: observer and idle heartbeat
        assert expired["pending"] == 0

        # The idle client says nothing but its heartbeats.  Several timeouts
        # later (and several sweeps) no further session has expired: neither
        # it nor the observer lost theirs.
        since = time.monotonic()
        wait_until(lambda: time.monotonic() - since > 3 * SESSION_TIMEOUT_S, what="three timeouts passing")
        later = status(observer)
        assert later["sessions_expired"] == expired["sessions_expired"]
        assert later["sessions"] == expired["sessions"]
        assert idle.load_balanced_view().apply_sync(lambda: "still here") == "still here"

        # The departed client comes back under its session name: the broker
        # no longer has the result and says so with a named failure.
        with zfarm.Client(conn, session="departed-session") as back:
            with pytest.raises(zfarm.TaskLost, match="no longer kept"):
                back.get_result(task_id).get(timeout=WAIT)



def print_between_gates(gate1: str, gate2: str, timeout: float) -> str:
    """Runs on an engine: prints, waits for gate1, prints again, waits for gate2 (bounded)."""
    print("first", flush=True)
    wait_for_file(gate1, timeout)
    print("second", flush=True)
    wait_for_file(gate2, timeout)
    return "done"


def test_a_client_that_fetched_a_running_task_sees_its_output_stream(own_cluster, tmp_path):
    c = own_cluster(1)
    gate1, gate2 = str(tmp_path / "gate1"), str(tmp_path / "gate2")
    with zfarm.Client(c.connection_file) as owner, zfarm.Client(c.connection_file) as other:
        owner.wait_for_engines(1, timeout=WAIT)
        ar = owner.load_balanced_view().apply_async(print_between_gates, gate1, gate2, WAIT)
        wait_until(lambda: "first" in (ar.stdout or ""), what="the task running and printing")
        fetched = other.get_result(ar.task_ids[0])
        # A round trip on the same socket: the broker has taken the Fetch.
        other.queue_status(timeout=WAIT)
        open(gate1, "w").close()
        # Printed after the fetch, while the task still runs: streamed to the fetcher too.
        wait_until(lambda: "second" in (fetched.stdout or ""), what="the fetcher seeing the output")
        assert not fetched.done()
        open(gate2, "w").close()
        assert fetched.get(timeout=WAIT) == "done"
        assert ar.get(timeout=WAIT) == "done"
        assert fetched.stdout == "first\nsecond\n"  # the result carries the whole output
        assert ar.stdout == "first\nsecond\n"


def test_a_client_cut_off_longer_than_the_timeout_is_told_and_its_awaited_results_end_lost(expiring, tmp_path):
    """The client's socket stays up but it says nothing (as if cut off): its
    session is forgotten, and a result it waits for can no longer reach it.
    Its next heartbeat's Welcome says so; it joins again and ends what it
    waited for with TaskLost instead of waiting forever."""
    conn = expiring.connection_file
    gate = tmp_path / "gate"
    with zfarm.Client(conn) as owner, zfarm.Client(conn) as cut_off:
        owner.wait_for_engines(1, timeout=WAIT)
        ar = owner.load_balanced_view().apply_async(wait_for_file, str(gate), WAIT)
        wait_until(lambda: status(owner)["engines"][0]["inflight"] == 1, what="the task running")
        awaited = cut_off.get_result(ar.task_ids[0])  # waits in the broker for the owner's task
        cut_off.queue_status(timeout=WAIT)  # a round trip: the Fetch was taken
        sessions = status(owner)["sessions"]
        cut_off._housekeeping = lambda: None  # no heartbeats (nor acks) from now on
        try:
            wait_until(lambda: status(owner)["sessions_expired"] >= 1, what="the silent session forgotten")
            assert status(owner)["sessions"] == sessions - 1
            gate.write_text("go")
            assert ar.get(timeout=WAIT) == "done"  # the owner has it; the forgotten watcher gets nothing
            assert not awaited.done()
        finally:
            del cut_off._housekeeping  # heartbeats again
        with pytest.raises(zfarm.TaskLost, match="forgot this client's session"):
            awaited.get(timeout=WAIT)
        # Joined again: a session of its own that works as before.
        wait_until(lambda: status(owner)["sessions"] == sessions, what="the session made again")
        assert cut_off.load_balanced_view().apply_sync(lambda: "back") == "back"
        assert cut_off.get_result(ar.task_ids[0]).get(timeout=WAIT) == "done"  # fetched from the cache
