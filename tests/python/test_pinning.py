"""Cluster(pin=...): each local process bound to one CPU, or left to the kernel."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import WAIT
from zfarm._cluster import placement, usable_cpus

CPUS = usable_cpus()
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="pinning needs two usable CPUs")


def thread_cpus(pid: int) -> list:
    """The CPU set of every thread of a process (libzmq's I/O thread included)."""
    found = []
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            found.append(os.sched_getaffinity(int(os.path.basename(task))))
        except OSError:  # the thread ended meanwhile
            pass
    return found


def engine_cpus_by_pid(cluster) -> dict:
    """Each engine's CPU set, as the engine itself reports it, by pid."""
    client = cluster.connect(timeout=WAIT)
    try:
        pids = client[:].apply_sync(os.getpid)
        sets = client[:].apply_sync(os.sched_getaffinity, 0)
    finally:
        client.close()
    return dict(zip(pids, sets))


def test_placement_rules():
    assert placement(2, "auto", [0, 1]) == (1, [0, 1])
    assert placement(4, "auto", [0, 1, 2, 3]) == (3, [0, 1, 2, 3])
    # auto: only one engine per usable CPU; not fewer engines, not more
    assert placement(1, "auto", [0, 1]) is None
    assert placement(3, "auto", [0, 1]) is None
    # True: round-robin over the usable CPUs, whatever they are numbered
    assert placement(3, True, [2, 5]) == (5, [2, 5, 2])
    assert placement(2, False, [0, 1]) is None
    # one CPU: nothing to choose
    assert placement(1, True, [3]) is None
    with pytest.raises(ValueError, match="pin must be"):
        placement(2, "always", [0, 1])


@needs_two_cpus
def test_pinned_cluster_binds_every_thread_of_broker_and_engines(own_cluster):
    c = own_cluster(2, pin=True)
    by_pid = engine_cpus_by_pid(c)
    expected = {p.pid: {CPUS[i]} for i, p in enumerate(c.engines)}
    assert by_pid == expected
    for p in c.engines:
        assert thread_cpus(p.pid) and all(s == expected[p.pid] for s in thread_cpus(p.pid))
    broker_threads = thread_cpus(c.broker.pid)
    assert len(broker_threads) >= 2  # its own and libzmq's I/O thread
    assert all(s == {CPUS[-1]} for s in broker_threads)
    assert c.cpus == {"broker": CPUS[-1], "engines": [CPUS[0], CPUS[1]]}


@needs_two_cpus
def test_unpinned_cluster_leaves_processes_on_every_usable_cpu(own_cluster):
    c = own_cluster(2, pin=False)
    by_pid = engine_cpus_by_pid(c)
    assert list(by_pid.values()) == [set(CPUS)] * 2
    assert os.sched_getaffinity(c.broker.pid) == set(CPUS)
    assert c.cpus is None


@needs_two_cpus
def test_auto_pins_one_engine_per_cpu_and_leaves_extra_engines_free(own_cluster):
    c = own_cluster(len(CPUS))  # pin="auto"
    c.add_engines(1)
    extra = c.engines[-1]
    by_pid = engine_cpus_by_pid(c)
    assert by_pid[extra.pid] == set(CPUS)
    assert [by_pid[p.pid] for p in c.engines[:-1]] == [{cpu} for cpu in CPUS]
    assert c.cpus["engines"][-1] is None


@needs_two_cpus
def test_a_restarted_broker_is_pinned_again(own_cluster):
    c = own_cluster(2, pin=True)
    old = c.broker.pid
    c.restart_broker()
    assert c.broker.pid != old
    assert os.sched_getaffinity(c.broker.pid) == {CPUS[-1]}


@needs_two_cpus
def test_default_size_follows_the_cpus_this_process_may_use():
    # A job given one CPU of the machine (taskset, a Slurm or container
    # cpuset) gets one engine, not one per core, and nothing is pinned.
    script = textwrap.dedent(
        f"""
        import json, os, zfarm
        os.sched_setaffinity(0, {{{CPUS[0]}}})
        c = zfarm.Cluster()
        with c as rc:
            print(json.dumps({{"n": c.n, "cpus": c.cpus, "ids": rc.ids,
                              "engine": sorted(rc[:].apply_sync(os.sched_getaffinity, 0)[0])}}))
        """
    )
    env = dict(os.environ)
    env.pop("ZFARM_CONNECTION_FILE", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"n": 1, "cpus": None, "ids": [0], "engine": [CPUS[0]]}
