"""Adaptive engine credit and give-back (protocol Credit, revision 2).

An engine asks for more tasks at once while its tasks run short, and when
one runs long it gives the tasks queued behind it back to the broker, which
sends them to another engine (docs/architecture.rst, "Engine credit").

Gates are files (conftest.Gate).  To make an engine hold many tasks behind a
long one, whatever the timing, the tasks wait at the broker for a dependency
that runs on the other engine: when it ends, the broker releases them all
in one go, and the engine with the most free credit gets the long task and
as many short ones as its credit allows.
"""
from __future__ import annotations

import collections

import pytest

import zfarm
from conftest import WAIT, Gate, gated, wait_until

N_SHORT = 30
CEILING = 16  # zfarm-engine's default --prefetch-max


def engine_status(rc, eid):
    for e in rc.queue_status()["engines"]:
        if e["id"] == eid:
            return e
    raise LookupError(eid)


def run_quick(rc, eid, n=64):
    """Runs n quick tasks on engine eid, all submitted before the first ends."""
    view = rc[eid]
    ars = [view.apply_async(abs, -i) for i in range(n)]
    assert [ar.get(timeout=WAIT) for ar in ars] == list(range(n))


def raise_credit(rc, eid, to=CEILING):
    """Runs quick tasks on engine eid until the broker shows its credit at `to`."""

    def ran_enough():
        run_quick(rc, eid)
        return engine_status(rc, eid)["credit"] == to

    wait_until(ran_enough, what=f"engine {eid}'s credit at {to}")


def gate_in(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    return Gate(folder)


def release_burst(rc, lv, tmp_path, name, make_shorts):
    """Holds engine 0 with a task P, queues the long task G and the short
    tasks (make_shorts(lv)) behind P at the broker, then lets P end.
    Returns (G, its gate, the shorts)."""
    e0 = min(rc.ids)
    gp, gg = gate_in(tmp_path, name + "-p"), gate_in(tmp_path, name + "-g")
    p = rc[e0].apply_async(gated, 0, gp.path, gp.folder, "p")
    wait_until(lambda: gp.started("p"), what="the dependency started")
    with lv.temp_flags(after=p):
        g = lv.apply_async(gated, 3, gg.path, gg.folder, "g")
        shorts = make_shorts(lv)
    wait_until(lambda: rc.queue_status()["blocked"] == len(shorts) + 1, what="the burst waiting at the broker")
    gp.open()
    assert p.get(timeout=WAIT) == 0
    return g, gg, shorts


def test_credit_rises_while_tasks_are_short(own_cluster):
    c = own_cluster(n=1)
    with c.connect(timeout=WAIT) as rc:
        (eid,) = rc.wait_for_engines(1, timeout=WAIT)
        assert engine_status(rc, eid)["credit"] == 2  # --prefetch, the default base
        raise_credit(rc, eid)
        status = rc.queue_status()
        # Doubling from 2 to 16 took three Credit messages at least; and
        # never more than two per 17 tasks (CreditPolicy), not one per task.
        assert 3 <= status["credits"] <= 2 * status["done"] // 17 + 1
        assert status["give_back_ignored"] == 0 and status["credits_ignored"] == 0


def test_a_fixed_credit_never_changes(own_cluster):
    c = own_cluster(n=1, prefetch=3, prefetch_max=3)
    with c.connect(timeout=WAIT) as rc:
        (eid,) = rc.wait_for_engines(1, timeout=WAIT)
        for _ in range(5):
            run_quick(rc, eid)
        status = rc.queue_status()
        assert engine_status(rc, eid)["credit"] == 3
        assert status["credits"] == 0 and status["given_back"] == 0


def test_short_tasks_are_not_stuck_behind_a_long_one(own_cluster, tmp_path):
    c = own_cluster(n=2)
    with c.connect(timeout=WAIT) as rc:
        e0, e1 = sorted(rc.wait_for_engines(2, timeout=WAIT))
        raise_credit(rc, e1)  # e1 will take the long task and many short ones
        lv = rc.load_balanced_view()
        g, gate, shorts = release_burst(rc, lv, tmp_path, "b",
                                        lambda v: [v.apply_async(abs, -i) for i in range(N_SHORT)])
        # Every short task ends while the long one still runs.
        assert [ar.get(timeout=WAIT) for ar in shorts] == list(range(N_SHORT))
        assert gate.started("g")
        status = rc.queue_status()
        assert status["given_back"] > 0  # e1 held short tasks behind the long one
        assert status["give_back_ignored"] == 0
        gate.open()
        assert g.get(timeout=WAIT) == 9


def test_without_give_back_short_tasks_wait_behind_a_long_one(own_cluster, tmp_path):
    # The same burst with a fixed credit of 16: what the give-back avoids.
    c = own_cluster(n=2, prefetch=CEILING, prefetch_max=CEILING)
    with c.connect(timeout=WAIT) as rc:
        rc.wait_for_engines(2, timeout=WAIT)
        lv = rc.load_balanced_view()
        g, gate, shorts = release_burst(rc, lv, tmp_path, "f",
                                        lambda v: [v.apply_async(abs, -i) for i in range(N_SHORT)])

        def settled():
            s = rc.queue_status()
            return s["queued"] == 0 and s["blocked"] == 0 and min(e["inflight"] for e in s["engines"]) == 0

        # The engine without the long task ran all it got; the other holds
        # short tasks behind the long one.
        wait_until(settled, what="the engine without the long task idle")
        held = max(e["inflight"] for e in rc.queue_status()["engines"])
        assert held >= 2
        wait_until(lambda: sum(ar.ready() for ar in shorts) == N_SHORT - (held - 1), what="the other results")
        assert rc.queue_status()["given_back"] == 0
        gate.open()
        assert g.get(timeout=WAIT) == 9
        assert [ar.get(timeout=WAIT) for ar in shorts] == list(range(N_SHORT))


def test_every_task_ends_in_one_result_under_give_back_and_abort(own_cluster, tmp_path):
    c = own_cluster(n=2)
    log = str(tmp_path / "ran.log")

    def record(log_path, name):
        """Runs on an engine: notes that it ran, returns its name.
        (Local, so it is sent by value: engines cannot import this module.)"""
        with open(log_path, "a") as f:
            f.write(name + "\n")
        return name

    with c.connect(timeout=WAIT) as rc:
        e0, e1 = sorted(rc.wait_for_engines(2, timeout=WAIT))
        lv = rc.load_balanced_view()
        outcome = {}
        for r in range(3):
            raise_credit(rc, e1)
            names = [f"{r}-{i}" for i in range(N_SHORT)]
            g, gate, shorts = release_burst(rc, lv, tmp_path, f"r{r}",
                                            lambda v: [v.apply_async(record, log, n) for n in names])
            # Aborts race the give-back: a task still queued (given back
            # or never sent) ends Aborted, one an engine holds runs.
            for ar in shorts[::3]:
                ar.abort()
            for name, ar in zip(names, shorts):
                try:
                    assert ar.get(timeout=WAIT) == name
                    outcome[name] = "ran"
                except zfarm.TaskAborted:
                    outcome[name] = "aborted"
            gate.open()
            assert g.get(timeout=WAIT) == 9
        with open(log) as f:
            runs = collections.Counter(line.strip() for line in f)
        for name, how in outcome.items():
            assert runs[name] == (1 if how == "ran" else 0), (name, how)
        assert sum(runs.values()) == list(outcome.values()).count("ran")
        status = rc.queue_status()
        assert status["pending"] == 0
        assert status["given_back"] > 0
        assert status["give_back_ignored"] == 0 and status["credits_ignored"] == 0
