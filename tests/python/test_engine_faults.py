"""Engine faults: Interrupt, broker restarts, broker timeout, CURVE.

Most tests play the broker themselves with a pyzmq ROUTER socket, so they
control exactly what the engine sees (which task runs, when the broker
vanishes and who answers next).  One test restarts a real zfarm-broker with
kill -9.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import struct
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

zmq = pytest.importorskip("zmq")

import zfarm  # noqa: E402
from zfarm import _core, _serialize  # noqa: E402
from zfarm._cluster import find_binary  # noqa: E402

from conftest import WAIT, end_process  # noqa: E402

SIG = b"ZFRM\x01"
REGISTER, REGISTER_REPLY, HEARTBEAT, TASK, RESULT, SHUTDOWN, ERROR, INTERRUPT = 1, 2, 3, 5, 6, 9, 10, 13
OK, REMOTE_ERROR, ABORTED = 0, 1, 3
HEARTBEAT_MS = 200


def _mp(v: Any) -> bytes:
    """Just enough msgpack to write a header."""
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        return b"\xcf" + struct.pack(">Q", v) if v >= 0 else b"\xd3" + struct.pack(">q", v)
    if isinstance(v, str):
        b = v.encode()
        return b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, list):
        return b"\xdc" + struct.pack(">H", len(v)) + b"".join(_mp(x) for x in v)
    raise TypeError(v)


def header(mtype: int, mid: int = 0, targets=(), status: int = 0, aux: int = 0, text: str = "") -> bytes:
    return _mp([mtype, mid, list(targets), status, aux, text])


class RouterPeer:
    """A pyzmq ROUTER bound at ``endpoint``: the broker's side, played by a
    test (here and in test_batch.py)."""

    def __init__(self, endpoint: str, curve_secret: Optional[bytes] = None):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        if curve_secret is not None:
            self.sock.curve_server = True
            self.sock.curve_secretkey = curve_secret
        self.sock.bind(endpoint)

    def close(self) -> None:
        """Vanishes like a killed broker: no goodbye, nothing flushed."""
        self.sock.close(linger=0)
        self.ctx.term()

    def incoming(self, until, timeout: float, peer: str):
        """Yields each message received (its frames) until ``until()`` is
        true; fails the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {peer}"
            if self.sock.poll(min(100, int(left * 1000) + 1)):
                yield self.sock.recv_multipart()


class FakeBroker(RouterPeer):
    """The broker's side of the engine protocol, driven by the test."""

    def __init__(self, endpoint: str, incarnation: str = "", curve_secret: Optional[bytes] = None,
                 first_id: int = 0):
        super().__init__(endpoint, curve_secret)
        self.incarnation = incarnation
        self.engines: Dict[bytes, int] = {}
        self.first_id = first_id
        self.results: List[Tuple[int, int, str, List[bytes]]] = []
        self.timings: Dict[int, List[int]] = {}  # task id -> its Result's targets (timing)
        self.registers = 0
        self.heartbeats = 0

    def pump(self, until, timeout: float = WAIT) -> None:
        """Answers the engine (Register, Heartbeat) until until() is true."""
        for frames in self.incoming(until, timeout, "the engine"):
            identity, h, payload = frames[0], _core.decode_msgpack(frames[2]), frames[3:]
            mtype = h[0]
            if mtype == REGISTER:
                self.registers += 1
                eid = self.engines.setdefault(identity, self.first_id + len(self.engines))
                self.send(identity, header(REGISTER_REPLY, h[1], [], HEARTBEAT_MS, eid, self.incarnation))
            elif identity not in self.engines:
                if mtype in (HEARTBEAT, RESULT):
                    self.send(identity, header(ERROR, h[1], [], 0, 0, "unknown engine: register again"))
            elif mtype == HEARTBEAT:
                self.heartbeats += 1
                self.send(identity, header(HEARTBEAT))
            elif mtype == RESULT:
                self.results.append((h[1], h[3], h[5], payload))
                self.timings[h[1]] = h[2]

    def send(self, identity: bytes, hdr: bytes, *payload) -> None:
        self.sock.send_multipart([identity, SIG, hdr, *payload])

    def wait_engine(self) -> bytes:
        self.pump(lambda: len(self.engines) > 0)
        return next(iter(self.engines))

    def task(self, identity: bytes, task_id: int, op: tuple) -> None:
        self.send(identity, header(TASK, task_id, [], 0, self.engines[identity]), *_serialize.dumps(op))

    def interrupt(self, identity: bytes, task_id: int) -> None:
        self.send(identity, header(INTERRUPT, task_id))

    def result(self, task_id: int) -> Tuple[int, str, Any]:
        """Waits for the Result of task_id: (status, text, decoded payload or None)."""
        found: List[Any] = []

        def got() -> bool:
            for r in self.results:
                if r[0] == task_id:
                    found.append(r)
                    return True
            return False

        self.pump(got)
        _, status, text, payload = found[0]
        return status, text, (_serialize.loads(payload) if payload else None)


def value_of(fb: FakeBroker, task_id: int) -> Any:
    status, text, outcome = fb.result(task_id)
    assert status == OK, (status, text, outcome)
    return outcome[1]


def start_engine(endpoint: Optional[str] = None, *args: str, connection_file: Optional[str] = None,
                 prefetch: int = 2, sigint_ignored: bool = False) -> subprocess.Popen:
    """An engine whose log goes to a temporary file (proc.log).

    ``sigint_ignored``: started as a shell starts a background job (``&``),
    with SIGINT ignored, which the engine inherits.
    """
    cmd = [find_binary("zfarm-engine"), "--heartbeat-ms", str(HEARTBEAT_MS), "--prefetch", str(prefetch)]
    cmd += ["--connection-file", connection_file] if connection_file else ["--url", endpoint]
    log = tempfile.TemporaryFile(mode="w+")
    sigint = signal.SIG_IGN if sigint_ignored else signal.SIG_DFL
    proc = subprocess.Popen(cmd + list(args), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    proc.log = log  # type: ignore[attr-defined]
    return proc


def engine_log(proc: subprocess.Popen) -> str:
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.log.read()  # type: ignore[attr-defined]


def stop(proc: subprocess.Popen) -> None:
    end_process(proc)
    log = getattr(proc, "log", None)
    if log is not None:
        log.close()


def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + WAIT
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def sleeper(marker: str) -> tuple:
    # Says it started, then sleeps far longer than any test waits: only an
    # interrupt that wakes time.sleep ends it in time.
    return ("execute", f"import time\nopen({marker!r}, 'w').close()\ntime.sleep(600)\n")


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture()
def endpoint(tmp_path):
    return f"ipc://{tmp_path}/engine.sock"


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["sigint-default", "sigint-ignored"])
def test_interrupt_stops_the_running_task_and_keeps_the_namespace(tmp_path, endpoint, sigint_ignored):
    fb = FakeBroker(endpoint)
    engine = start_engine(endpoint, sigint_ignored=sigint_ignored)
    try:
        eng = fb.wait_engine()
        fb.task(eng, 1, ("execute", "x = 41"))
        assert fb.result(1)[0] == OK
        marker = str(tmp_path / "started")
        fb.task(eng, 2, sleeper(marker))
        fb.pump(lambda: os.path.exists(marker))
        fb.interrupt(eng, 2)
        status, text, outcome = fb.result(2)
        assert status == ABORTED
        assert text.startswith("interrupted")
        assert "KeyboardInterrupt" in text and "line 3" in text  # the time.sleep line
        assert outcome[0] == "error" and outcome[1]["ename"] == "KeyboardInterrupt"
        # Same process, same namespace, and it runs the next task.
        fb.task(eng, 3, ("pull", "x"))
        assert value_of(fb, 3) == 41
        assert engine.poll() is None
    finally:
        stop(engine)
        fb.close()


def test_interrupt_of_a_prefetched_task_drops_it_before_it_starts(tmp_path, endpoint):
    fb = FakeBroker(endpoint)
    engine = start_engine(endpoint, prefetch=3)
    try:
        eng = fb.wait_engine()
        marker = str(tmp_path / "started")
        fb.task(eng, 1, sleeper(marker))
        fb.task(eng, 2, ("execute", "never = 1"))
        fb.pump(lambda: os.path.exists(marker))
        fb.interrupt(eng, 2)
        assert fb.result(2)[:2] == (ABORTED, "aborted before it started")
        fb.interrupt(eng, 1)
        assert fb.result(1)[0] == ABORTED
        fb.task(eng, 3, ("keys",))
        assert "never" not in value_of(fb, 3)
        # An id the engine does not hold is ignored.
        fb.interrupt(eng, 12345)
        fb.task(eng, 4, ("apply", lambda: 7, (), {}))
        assert value_of(fb, 4) == 7
        assert [r[0] for r in fb.results].count(2) == 1  # one result per task
    finally:
        stop(engine)
        fb.close()


def test_interrupts_racing_the_end_of_tasks_never_kill_the_engine(endpoint):
    fb = FakeBroker(endpoint)
    engine = start_engine(endpoint)
    try:
        eng = fb.wait_engine()
        fb.task(eng, 1, ("execute", "n = 0"))
        assert fb.result(1)[0] == OK
        for i in range(2, 42):
            # The interrupt lands while the tiny task runs, as it ends, or
            # after: any of these is fine, but only one result each, and the
            # engine must survive to run the next.
            fb.task(eng, i, ("execute", "n += 1"))
            fb.interrupt(eng, i)
        statuses = [fb.result(i) for i in range(2, 42)]
        assert all(st in (OK, ABORTED) for st, _, _ in statuses)
        ok = sum(1 for st, _, _ in statuses if st == OK)
        interrupted = sum(1 for st, text, _ in statuses if st == ABORTED and text.startswith("interrupted"))
        fb.task(eng, 100, ("pull", "n"))
        # Each OK task ran once; an interrupted one may have run before the
        # KeyboardInterrupt landed; one dropped before it started never ran.
        assert ok <= value_of(fb, 100) <= ok + interrupted
        assert engine.poll() is None
        assert len({r[0] for r in fb.results}) == len(fb.results)
    finally:
        stop(engine)
        fb.close()


def test_heartbeats_go_on_while_a_task_computes_holding_the_gil(endpoint):
    # The main thread serves the socket only between tasks; during a long
    # one the watch thread must take it over (it needs no GIL).
    fb = FakeBroker(endpoint)
    engine = start_engine(endpoint)
    try:
        eng = fb.wait_engine()
        fb.task(eng, 1, ("execute", "import time\nend = time.monotonic() + 1.5\n"
                                    "while time.monotonic() < end: pass"))
        before = fb.heartbeats
        assert fb.result(1)[0] == OK
        assert fb.heartbeats - before >= 3  # one every 200 ms: about 7
        assert fb.registers == 1  # the engine never took the broker for gone
        assert engine.poll() is None
    finally:
        stop(engine)
        fb.close()


def test_a_burst_of_mixed_tasks_each_ends_with_its_own_result_and_output(endpoint):
    # The engine reuses the output captures of a task that printed nothing
    # and sends canned pickles for small results: neither may leak one
    # task's stream or value into another.
    fb = FakeBroker(endpoint)
    engine = start_engine(endpoint, prefetch=8)
    tasks = [
        ("apply", int, (), {}),
        ("apply", print, ("one",), {}),
        ("apply", int, (), {}),
        ("execute", "import sys\nkept = sys.stdout"),  # prints nothing, keeps its stream
        ("execute", "kept.write('late')"),               # into task 4's stream, not its own
        ("apply", lambda: 1 / 0, (), {}),
        ("apply", lambda: 5, (), {}),
        ("apply", lambda: 300, (), {}),
        ("apply", lambda: True, (), {}),
        ("apply", lambda: 0.0, (), {}),
        ("execute", "same = kept is sys.stdout"),
        ("execute", "import sys\nsys.stderr.write('err')"),
        ("apply", int, (), {}),
    ]
    try:
        eng = fb.wait_engine()
        for i, op in enumerate(tasks, 1):
            fb.task(eng, i, op)
        outcomes = [fb.result(i) for i in range(1, len(tasks) + 1)]
        assert [r[0] for r in fb.results] == list(range(1, len(tasks) + 1))  # one each, in order
        assert [st for st, _, _ in outcomes] == [OK] * 5 + [REMOTE_ERROR] + [OK] * 7
        kinds_values = [(o[0], o[1]) for _, _, o in outcomes]
        assert kinds_values[:5] == [("ok", 0), ("ok", None), ("ok", 0), ("ok", None), ("ok", None)]
        assert kinds_values[5][0] == "error" and kinds_values[5][1]["ename"] == "ZeroDivisionError"
        assert "in <lambda>" in kinds_values[5][1]["traceback"]
        assert kinds_values[6:] == [("ok", 5), ("ok", 300), ("ok", True), ("ok", 0.0), ("ok", None),
                                    ("ok", None), ("ok", 0)]
        assert type(kinds_values[8][1]) is bool and type(kinds_values[9][1]) is float
        assert [(o[2], o[3]) for _, _, o in outcomes] == (
            [("", ""), ("one\n", "")] + [("", "")] * 9 + [("", "err"), ("", "")])
        fb.task(eng, 100, ("pull", "same"))
        assert value_of(fb, 100) is False  # task 11 had a stream of its own
    finally:
        stop(engine)
        fb.close()


# How the engine can tell the new broker from the old: its incarnation in
# RegisterReply, or (a broker that names none) another engine id.  An old
# broker's "unknown engine" reply is the third way, covered by the units
# (whether the engine's first message to the new broker is a Heartbeat or
# its Register depends on timing).
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
@pytest.mark.parametrize("tell", ["incarnation", "new id"])
def test_a_restarted_broker_gets_a_fresh_engine_state(tmp_path, transport, tell):
    endpoint = f"ipc://{tmp_path}/engine.sock" if transport == "ipc" else free_tcp_endpoint()
    incarnation = tell == "incarnation"
    fb = FakeBroker(endpoint, incarnation="first" if incarnation else "")
    engine = start_engine(endpoint, prefetch=3)
    fb2 = None
    try:
        eng = fb.wait_engine()
        fb.task(eng, 1, ("execute", "kept = 'namespace'"))
        assert fb.result(1)[0] == OK
        started, release = str(tmp_path / "started"), str(tmp_path / "release")
        fb.task(eng, 2, ("execute", f"import os, time\nopen({started!r}, 'w').close()\n"
                                    f"while not os.path.exists({release!r}): time.sleep(0.01)\nold = 1"))
        fb.task(eng, 3, ("execute", "prefetched = 1"))
        fb.pump(lambda: os.path.exists(started))
        fb.close()  # killed: task 2 runs, task 3 waits in the engine
        fb2 = FakeBroker(endpoint, incarnation="second" if incarnation else "", first_id=0 if incarnation else 7)
        eng2 = fb2.wait_engine()
        assert eng2 == eng  # the same engine process, registered again
        # Task 2 ends now; its result has nowhere to go.  (The engine holds
        # task 3 back until the new broker's reply to its Register is in.)
        open(release, "w").close()
        fb2.task(eng2, 1, ("keys",))  # the same task id as the old broker's
        names = value_of(fb2, 1)
        assert "kept" in names and "old" in names
        assert "prefetched" not in names  # task 3 was dropped, not run
        assert {r[0] for r in fb2.results} == {1}  # nothing of the old broker's
        assert engine.poll() is None
    finally:
        stop(engine)
        if fb2 is not None:
            fb2.close()


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_engine_survives_a_real_broker_killed_and_restarted(tmp_path, transport):
    if transport == "ipc":
        client_ep, engine_ep = f"ipc://{tmp_path}/c.sock", f"ipc://{tmp_path}/e.sock"
    else:
        client_ep = engine_ep = free_tcp_endpoint()
        while engine_ep == client_ep:
            engine_ep = free_tcp_endpoint()

    def start_broker(name: str) -> Tuple[subprocess.Popen, str]:
        cf = str(tmp_path / name)
        proc = subprocess.Popen([find_binary("zfarm-broker"), "--client-endpoint", client_ep,
                                 "--engine-endpoint", engine_ep, "--connection-file", cf,
                                 "--heartbeat-ms", str(HEARTBEAT_MS)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_file(cf)
        return proc, cf

    broker, cf = start_broker("one.json")
    engine = start_engine(connection_file=cf)
    broker2 = None
    try:
        with zfarm.Client(cf) as rc:
            rc.wait_for_engines(1, timeout=WAIT)
            rc[:].execute("before = 'restart'", block=True)
        broker.kill()
        broker.wait(WAIT)
        broker2, cf2 = start_broker("two.json")
        with zfarm.Client(cf2) as rc:
            rc.wait_for_engines(1, timeout=WAIT)
            assert rc[:].pull("before", block=True) == ["restart"]
        assert engine.poll() is None
        assert "registering again" in engine_log(engine)
    finally:
        stop(engine)
        for b in (broker, broker2):
            if b is not None:
                stop(b)


def test_broker_timeout_ends_a_lonely_engine(endpoint):
    engine = start_engine(endpoint, "--broker-timeout", "0.5")
    try:
        assert engine.wait(WAIT) == 1
        assert "no word from the broker" in engine_log(engine)
    finally:
        stop(engine)


def test_engine_registers_over_curve_with_the_connection_file_keys(tmp_path):
    server_public, server_secret = zmq.curve_keypair()
    engine_public, engine_secret = zmq.curve_keypair()
    endpoint = free_tcp_endpoint()
    cf = tmp_path / "connection.json"
    cf.write_text(json.dumps({"version": 1, "client": "tcp://127.0.0.1:1", "engine": endpoint, "pid": 1,
                              "curve": {"server_public": server_public.decode(),
                                        "server_secret": server_secret.decode(),
                                        "engine_public": engine_public.decode(),
                                        "engine_secret": engine_secret.decode()}}))
    fb = FakeBroker(endpoint, curve_secret=server_secret)
    engine = start_engine(connection_file=str(cf))
    try:
        eng = fb.wait_engine()
        fb.task(eng, 1, ("apply", lambda: "secret", (), {}))
        assert value_of(fb, 1) == "secret"
    finally:
        stop(engine)
        fb.close()
