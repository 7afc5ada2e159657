"""Two real clients on one cluster share its engine fairly.

The broker queues load-balanced work per client session and serves the
sessions in turn (docs/tasks.rst), so a client that arrives behind a large
backlog of another client's tasks does not wait for all of them.  The engine
appends the name of every task it runs to a log file, so the order it ran
them in is known exactly: nothing here depends on timing."""
from __future__ import annotations

import pytest

import zfarm
from conftest import WAIT, Gate, gated, wait_until


def ran(log_path):
    with open(log_path) as f:
        return [line.split()[0] for line in f]


@pytest.mark.parametrize("prefetch", [1, 4])
def test_a_late_client_is_not_starved_by_a_backlog(own_cluster, tmp_path, prefetch):
    c = own_cluster(n=1, prefetch=prefetch)
    gate = Gate(tmp_path)
    log = str(tmp_path / "ran.log")
    n_a, n_b = 2000, 20

    def record(log_path, who, i):
        """Runs on an engine: notes that task (who, i) ran, returns i.
        (Local, so it is sent by value: engines cannot import this module.)"""
        with open(log_path, "a") as f:
            f.write(f"{who} {i}\n")
        return i

    with zfarm.Client(c.connection_file) as a, zfarm.Client(c.connection_file) as b:
        a.wait_for_engines(1, timeout=WAIT)
        assert a.session != b.session
        # Hold the engine so both backlogs are queued at the broker first.
        held = a.load_balanced_view().apply_async(gated, 0, gate.path)
        a_ar = a.load_balanced_view().map(record, [log] * n_a, ["a"] * n_a, range(n_a), chunksize=1)
        wait_until(lambda: a.queue_status()["pending"] == n_a + 1, what="client A's tasks at the broker")
        b_ar = b.load_balanced_view().map(record, [log] * n_b, ["b"] * n_b, range(n_b), chunksize=1)
        wait_until(lambda: b.queue_status()["pending"] == n_a + n_b + 1, what="client B's tasks at the broker")
        gate.open()
        assert b_ar.get(timeout=WAIT) == list(range(n_b))
        order = ran(log)
        last_b = max(i for i, who in enumerate(order) if who == "b")
        a_before = order[:last_b].count("a")
        # Turns: one of A's tasks for each of B's, plus what the engine had
        # taken before B's tasks arrived (its prefetch).
        assert a_before <= n_b + prefetch + 2, order[: last_b + 1]
        assert a_before < n_a // 10
        assert a_ar.get(timeout=WAIT) == list(range(n_a))
        assert held.get(timeout=WAIT) == 0
        order = ran(log)
        assert order.count("a") == n_a and order.count("b") == n_b
        assert a.queue_status()["queued"] == 0
