"""Fixtures: real zfarm-broker and zfarm-engine processes, always reaped."""
from __future__ import annotations

import contextlib
import io
import os

import pytest

import zfarm

# Heartbeats fast enough that fault tests finish quickly on 2 cores; the
# liveness (missed intervals before a peer counts as dead, 2 s in all) is
# generous so a loaded machine does not declare healthy engines dead.
TEST_HEARTBEAT_MS = 250
TEST_LIVENESS = 8
# The shared cluster is never damaged on purpose, so nothing waits for it to
# notice a death: 10 s of silence before the broker and its engines give up
# on each other.  Two seconds were too short for it at a load average of 8
# (an engine starved that long re-registered under a new id in the middle of
# a long test, and the tests after it that name engines 0 and 1 failed).
SHARED_LIVENESS = 40


def _liveness_args(kwargs, liveness: int = TEST_LIVENESS):
    kwargs.setdefault("heartbeat_ms", TEST_HEARTBEAT_MS)
    kwargs["broker_args"] = ["--liveness", str(liveness), *kwargs.get("broker_args", ())]
    kwargs["engine_args"] = ["--liveness", str(liveness), *kwargs.get("engine_args", ())]
    return kwargs
WAIT = 60.0  # upper bound for any single wait in the tests


@contextlib.contextmanager
def running_cluster(n: int = 2, liveness: int = TEST_LIVENESS, **kwargs):
    """A started Cluster with the test heartbeats, stopped and checked at the end."""
    c = zfarm.Cluster(n=n, **_liveness_args(kwargs, liveness))
    c.start()
    try:
        yield c
    finally:
        c.stop()
        for p in c.processes():
            assert p.poll() is not None, "a cluster process was left running"


@pytest.fixture(scope="session")
def cluster():
    """One cluster of 2 engines shared by the tests that do not break it."""
    with running_cluster(2, liveness=SHARED_LIVENESS) as c:
        yield c


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
        c = zfarm.Cluster(n=n, **_liveness_args(kwargs))
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


def end_process(proc, timeout: float = WAIT) -> None:
    """SIGTERM if still running, then waits; SIGKILL if it does not leave in time."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def wait_until(condition, timeout: float = WAIT, interval: float = 0.01, what: str = "condition"):
    """Polls ``condition()`` until it is true (returns its value) or fails the test."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


def engine_id_of(rc, pid: int) -> int:
    """The engine id of the engine process ``pid`` (from the broker's status)."""
    for e in rc.queue_status()["engines"]:
        if e["host"].rsplit(":", 1)[-1] == str(pid):
            return e["id"]
    raise LookupError(f"no engine with pid {pid}")


class Gate:
    """A file tasks wait for: lets a test hold engines busy, then release them.

    ``gate.wait`` and ``gate.mark`` are plain functions sent to engines.
    """

    def __init__(self, folder):
        self.path = str(folder / "gate")
        self.folder = str(folder)

    def open(self) -> None:
        with open(self.path, "w"):
            pass

    def started(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.folder, f"started-{name}"))

    def hold(self, view, x, name: str):
        """Submits gated(x) through view and waits until it runs: the
        engine stays busy with it until the gate opens."""
        ar = view.apply_async(gated, x, self.path, self.folder, name)
        wait_until(lambda: self.started(name), what=f"task {name!r} started")
        return ar


class OpenGateWhenShown(io.StringIO):
    """A stand-in for sys.stdout that opens the gate file once every needle
    was written.  Engines that wait for that gate were still running their
    task when a needle they print reached here: the output was live."""

    def __init__(self, gate: str, needles):
        super().__init__()
        self.gate = gate
        self.needles = list(needles)

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.needles and all(x in self.getvalue() for x in self.needles):
            self.needles = []
            open(self.gate, "w").close()
        return n


def gated(x, gate_path, started_dir=None, name=None):
    """Runs on an engine: marks itself started, waits for the gate, returns x*x."""
    import os as _os
    import time as _time

    if started_dir is not None:
        open(_os.path.join(started_dir, f"started-{name}"), "w").close()
    deadline = _time.monotonic() + 60
    while not _os.path.exists(gate_path):
        if _time.monotonic() > deadline:
            raise RuntimeError("the gate never opened")
        _time.sleep(0.005)
    return x * x


def spin(seconds, started_path=None):
    """Runs on an engine: a busy Python loop (interruptible between bytecodes)."""
    import time as _time

    if started_path is not None:
        open(started_path, "w").close()
    end = _time.monotonic() + seconds
    while _time.monotonic() < end:
        _time.sleep(0.005)
    return "finished"



# The helpers above run on engines, which cannot import this module: send
# them by value.
import sys as _sys  # noqa: E402

import cloudpickle as _cloudpickle  # noqa: E402

_cloudpickle.register_pickle_by_value(_sys.modules[__name__])
