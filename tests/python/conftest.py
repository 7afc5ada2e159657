"""Fixtures: real zfarm-broker and zfarm-engine processes, always reaped."""
from __future__ import annotations

import os

import pytest

import zfarm

# Heartbeats fast enough that fault tests finish quickly on 2 cores, slow
# enough that a loaded machine does not declare healthy engines dead.
TEST_HEARTBEAT_MS = 200
WAIT = 60.0  # upper bound for any single wait in the tests


@pytest.fixture(scope="session")
def cluster():
    """One cluster of 2 engines shared by the tests that do not break it."""
    c = zfarm.Cluster(n=2, heartbeat_ms=TEST_HEARTBEAT_MS)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        for p in c.processes():
            assert p.poll() is not None, "a cluster process was left running"


@pytest.fixture()
def rc(cluster):
    client = cluster.connect(timeout=WAIT)
    try:
        client[:].reset(block=True)
        yield client
    finally:
        client.close()


@pytest.fixture()
def own_cluster():
    """A fresh cluster a test may damage (kill engines, send garbage)."""
    made = []

    def make(n: int = 2, **kwargs):
        kwargs.setdefault("heartbeat_ms", TEST_HEARTBEAT_MS)
        c = zfarm.Cluster(n=n, **kwargs)
        c.start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()
        for p in c.processes():
            assert p.poll() is not None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
