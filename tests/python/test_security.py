"""Security with real processes: who may start a broker where, who CURVE and
the ZAP allow-list let in, what the connection files hold, and the message
limits.  docs/security.rst is the prose.

Every process is reaped (Cluster.stop, or the `processes` fixture below) and
every wait is bounded.  An intruder's task is a function that would create a
marker file on the engine; the tests check the file never appears.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from typing import List, Optional

import cloudpickle
import pytest

import zfarm
from conftest import TEST_HEARTBEAT_MS, TEST_LIVENESS, WAIT, running_cluster, wait_until
from zfarm import _core, _serialize
from zfarm._client import MSG_STATUS, MSG_SUBMIT
from zfarm._cluster import find_binary
from zfarm._profiles import engine_connection_info

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# How long an intruder waits for an answer that must never come.  Long
# enough for a CURVE handshake on a loaded machine; a missing answer is what
# is asserted, so a slow machine cannot make the test pass wrongly.
INTRUDER_WAIT = 3.0
KEY_NAMES = ("server_public", "server_secret", "client_public", "client_secret", "engine_public", "engine_secret")


def leave_mark(path):
    """Runs on an engine: the evidence that a task ran."""
    with open(path, "w") as f:
        f.write("ran")
    return "ran"


def new_keypair():
    public, secret = _core.curve_keypair()
    return public, secret


def write_json(path, data) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.chmod(path, 0o600)
    return str(path)


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def file_mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


LOOPBACK_TCP = ["--client-endpoint", "tcp://127.0.0.1:*", "--engine-endpoint", "tcp://127.0.0.1:*"]


def loopback(endpoint: str) -> str:
    """tcp://0.0.0.0:PORT -> tcp://127.0.0.1:PORT: where this machine connects."""
    return "tcp://127.0.0.1:" + endpoint.rsplit(":", 1)[1]


def client_file(tmp_path, info: dict, name: str, curve: Optional[dict]) -> str:
    """A connection file for a client with the given curve section (None: plain text)."""
    out = {"version": 1, "client": loopback(info["client"]), "pid": info["pid"],
           "max_message_bytes": info.get("max_message_bytes", -1)}
    if curve is not None:
        out["curve"] = curve
    return write_json(tmp_path / f"{name}.json", out)


def status_of(rc, key: str) -> int:
    return rc.queue_status(timeout=WAIT)[key]


class Processes:
    """Processes started by hand, killed and reaped at the end of the test."""

    def __init__(self):
        self.started: List[subprocess.Popen] = []

    def start(self, args, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen([str(a) for a in args], **kwargs)
        self.started.append(p)
        return p

    def broker(self, conn, *args) -> subprocess.Popen:
        """A broker writing `conn`; returns once the file is written."""
        p = self.start([find_binary("zfarm-broker"), "--connection-file", conn,
                        "--heartbeat-ms", TEST_HEARTBEAT_MS, "--liveness", TEST_LIVENESS, *args],
                       stderr=subprocess.PIPE, text=True)
        wait_until(lambda: p.poll() is not None or (os.path.exists(conn) and read_json(conn).get("pid") == p.pid),
                   what="the broker's connection file")
        assert p.poll() is None, f"the broker exited: {p.stderr.read()}"
        return p

    def engine(self, conn, *args) -> subprocess.Popen:
        return self.start([find_binary("zfarm-engine"), "--connection-file", conn,
                           "--heartbeat-ms", TEST_HEARTBEAT_MS, "--liveness", TEST_LIVENESS, *args])

    def stop(self) -> None:
        for p in reversed(self.started):  # engines before their broker
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.started:
            try:
                p.wait(WAIT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(WAIT)
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture()
def processes():
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop()
        assert all(p.poll() is not None for p in procs.started)


def run_broker(*args, timeout: float = WAIT) -> subprocess.CompletedProcess:
    """A broker that is expected to refuse to start."""
    return subprocess.run([find_binary("zfarm-broker"), *[str(a) for a in args]], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# -- where a broker may listen ----------------------------------------------------------------


def test_public_address_without_a_connection_file_refuses_to_start():
    r = run_broker("--client-endpoint", "tcp://0.0.0.0:*")
    assert r.returncode == 2
    assert "refusing to start" in r.stderr
    assert "0.0.0.0 is not a loopback address" in r.stderr
    assert "--allow-insecure" in r.stderr  # says how to do it anyway
    r = run_broker("--engine-endpoint", "tcp://0.0.0.0:*", "--curve")
    assert r.returncode == 2 and "CURVE needs --connection-file" in r.stderr


def test_bad_security_options_refuse_to_start(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("client " + new_keypair()[0] + "\n")
    r = run_broker("--connection-file", tmp_path / "c.json", "--authorized-keys", keys)
    assert r.returncode == 2 and "--authorized-keys needs CURVE" in r.stderr
    keys.write_text("# comment\n\nclient not-a-key\n")
    r = run_broker("--connection-file", tmp_path / "c.json", "--curve", "--authorized-keys", keys)
    assert r.returncode == 2 and "line 3" in r.stderr and "not a CURVE public key" in r.stderr
    keys.write_text("admin " + new_keypair()[0] + "\n")
    r = run_broker("--connection-file", tmp_path / "c.json", "--curve", "--authorized-keys", keys)
    assert r.returncode == 2 and "line 1" in r.stderr and 'expected "client <key>"' in r.stderr
    r = run_broker("--connection-file", tmp_path / "c.json", "--curve", "--authorized-keys", tmp_path / "none")
    assert r.returncode == 2 and "cannot read" in r.stderr
    assert not (tmp_path / "c.json").exists()


def test_public_address_turns_curve_on_and_plain_text_gets_nothing(processes, tmp_path):
    conn = str(tmp_path / "c.json")
    broker = processes.broker(conn, "--client-endpoint", "tcp://0.0.0.0:*")
    info = read_json(conn)
    assert info["client"].startswith("tcp://0.0.0.0:")
    assert sorted(info["curve"]) == sorted(KEY_NAMES)
    with zfarm.Client(client_file(tmp_path, info, "plain", None)) as intruder:
        with pytest.raises(zfarm.TimeoutError):
            intruder.queue_status(timeout=INTRUDER_WAIT)
    with zfarm.Client(client_file(tmp_path, info, "keyed", info["curve"])) as rc:
        assert rc.queue_status(timeout=WAIT)["engines"] == []
    broker.send_signal(signal.SIGTERM)
    broker.wait(WAIT)
    err = broker.stderr.read()
    assert "CURVE is on" in err


def test_allow_insecure_binds_plain_text_and_warns(processes, tmp_path):
    conn = str(tmp_path / "c.json")
    broker = processes.broker(conn, "--client-endpoint", "tcp://0.0.0.0:*", "--allow-insecure")
    info = read_json(conn)
    assert "curve" not in info
    with zfarm.Client(client_file(tmp_path, info, "plain", None)) as rc:
        assert rc.queue_status(timeout=WAIT)["auth_refused"] == 0
    broker.send_signal(signal.SIGTERM)
    broker.wait(WAIT)
    assert "WARNING: --allow-insecure" in broker.stderr.read()


# -- a CURVE cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def curve_cluster():
    # On loopback TCP (a Cluster's default is Unix sockets in a private
    # folder): a port that any local process can reach is what CURVE guards.
    with running_cluster(2, curve=True, broker_args=LOOPBACK_TCP) as c:
        yield c


def test_curve_cluster_runs_tasks(curve_cluster):
    with curve_cluster.connect(timeout=WAIT) as rc:
        assert len(rc.ids) == 2
        assert rc.load_balanced_view().map_sync(lambda x: x * 3, range(200)) == [x * 3 for x in range(200)]
        pids = rc[:].apply_sync(os.getpid)
        assert sorted(pids) == sorted(p.pid for p in curve_cluster.engines)


def test_connection_file_is_private_and_holds_the_keys(curve_cluster):
    path = curve_cluster.connection_file
    assert file_mode(path) == 0o600
    info = read_json(path)
    assert info["client"].startswith("tcp://127.0.0.1:")
    curve = info["curve"]
    assert sorted(curve) == sorted(KEY_NAMES)
    assert all(len(curve[k]) == 40 for k in KEY_NAMES)
    # Three different pairs: a client key is not an engine key.
    assert len({curve["server_public"], curve["client_public"], curve["engine_public"]}) == 3
    # What engines on other hosts get: no client secret, no server secret.
    engine_info = engine_connection_info(info, "127.0.0.1")
    assert sorted(engine_info["curve"]) == ["engine_public", "engine_secret", "server_public"]
    assert "client" not in engine_info


def intruder_curve(info: dict, how: str) -> Optional[dict]:
    """The curve section of an intruder's connection file."""
    keys = dict(info["curve"])
    for k in ("server_secret", "engine_secret", "engine_public"):
        keys.pop(k)
    if how == "no_keys":
        return None
    if how == "unlisted_client_key":
        # Knows the server's public key, so CURVE alone would let it in.
        keys["client_public"], keys["client_secret"] = new_keypair()
    elif how == "wrong_server_key":
        keys["server_public"] = new_keypair()[0]
    elif how == "engine_key_on_client_port":
        keys["client_public"], keys["client_secret"] = info["curve"]["engine_public"], info["curve"]["engine_secret"]
    return keys


# Refusals the ZAP handler sees (the others fail the CURVE handshake first).
ZAP_REFUSES = {"unlisted_client_key", "engine_key_on_client_port"}


@pytest.mark.parametrize("how", ["no_keys", "unlisted_client_key", "wrong_server_key", "engine_key_on_client_port"])
def test_unauthorised_client_cannot_submit(curve_cluster, tmp_path, how):
    info = read_json(curve_cluster.connection_file)
    marker = tmp_path / "marker"
    with curve_cluster.connect(timeout=WAIT) as rc:
        refused = status_of(rc, "auth_refused")
        failed = status_of(rc, "handshake_failed_client")
        clients = status_of(rc, "clients")
        intruder = zfarm.Client(client_file(tmp_path, info, how, intruder_curve(info, how)))
        try:
            ar = intruder.load_balanced_view().apply_async(leave_mark, str(marker))
            with pytest.raises(zfarm.TimeoutError):
                ar.get(timeout=INTRUDER_WAIT)
            with pytest.raises(zfarm.TimeoutError):
                intruder.queue_status(timeout=1.0)
            assert intruder.incarnation is None  # never welcomed
            if how in ZAP_REFUSES:
                wait_until(lambda: status_of(rc, "auth_refused") > refused, what="the refusal counted")
            # Every intruder fails its handshake, ZAP refusal or not, and the
            # broker's handshake monitor counts it.
            wait_until(lambda: status_of(rc, "handshake_failed_client") > failed, what="the failed handshake counted")
        finally:
            intruder.close()
        # Both engines run a task after the intruder's: had its task got in,
        # it would have run first (FIFO) and left the marker.
        assert rc[:].apply_sync(os.getpid) is not None
        assert rc.load_balanced_view().apply_sync(lambda: "served") == "served"
        assert not marker.exists()
        assert status_of(rc, "clients") == clients  # the intruder never got a session


def test_failed_handshakes_are_counted_and_logged_and_good_peers_are_not(processes, tmp_path):
    """On a broker of its own, so that nothing but this test's peers connect."""
    conn = str(tmp_path / "c.json")
    broker = processes.broker(conn, "--curve")
    processes.engine(conn)
    with zfarm.Client(conn) as rc:
        rc.wait_for_engines(1, timeout=WAIT)
        assert rc.load_balanced_view().apply_sync(lambda: "served") == "served"
        s = rc.queue_status(timeout=WAIT)
        # A client and an engine with the right keys: nothing failed.
        assert s["handshake_failed_client"] == 0
        assert s["handshake_failed_engine"] == 0
        info = read_json(conn)
        for how in ("no_keys", "wrong_server_key"):
            before = status_of(rc, "handshake_failed_client")
            intruder = zfarm.Client(client_file(tmp_path, info, how, intruder_curve(info, how)))
            try:
                wait_until(lambda: status_of(rc, "handshake_failed_client") > before, what=f"{how} counted")
            finally:
                intruder.close()
        assert status_of(rc, "handshake_failed_engine") == 0
        assert status_of(rc, "auth_refused") == 0  # these never reached the key check
    broker.send_signal(signal.SIGTERM)
    broker.wait(WAIT)
    err = broker.stderr.read()
    assert "a client handshake on" in err, err
    # Without keys, which side notices the mismatch first is a race: the
    # broker's (mismatch) or the peer's, which hangs up (a connection error).
    assert "security mechanism mismatch" in err or "failed during the handshake" in err, err
    assert "CURVE decryption failed" in err, err


def test_engine_with_an_unlisted_key_cannot_register(curve_cluster, processes, tmp_path):
    info = read_json(curve_cluster.connection_file)
    public, secret = new_keypair()
    rogue = write_json(tmp_path / "rogue.json", {
        "version": 1, "engine": info["engine"],
        "curve": {"server_public": info["curve"]["server_public"], "engine_public": public, "engine_secret": secret}})
    with curve_cluster.connect(timeout=WAIT) as rc:
        ids = set(rc.ids)
        refused = status_of(rc, "auth_refused")
        failed = status_of(rc, "handshake_failed_engine")
        engine = processes.engine(rogue)
        wait_until(lambda: status_of(rc, "auth_refused") > refused, what="the rogue engine refused")
        wait_until(lambda: status_of(rc, "handshake_failed_engine") > failed, what="its handshake counted")
        assert engine.poll() is None  # it keeps trying, harmlessly
        assert set(rc.ids) == ids
        assert len(rc.queue_status()["engines"]) == 2


def test_engine_on_another_host_needs_only_the_engine_file(processes, tmp_path):
    """What `zfarm cluster start --engines ssh` does: the broker's engine port
    on every interface, engines given only the engine part of the file."""
    conn = str(tmp_path / "c.json")
    processes.broker(conn, "--engine-endpoint", "tcp://0.0.0.0:*")
    info = read_json(conn)
    assert "curve" in info  # turned on by the public engine port
    engine_file = write_json(tmp_path / "c.engine.json", engine_connection_info(info, "127.0.0.1"))
    assert read_json(engine_file)["engine"] == loopback(info["engine"])
    processes.engine(engine_file)
    # The client needs only its own pair and the server's public key.
    mine = {k: info["curve"][k] for k in ("server_public", "client_public", "client_secret")}
    with zfarm.Client(client_file(tmp_path, info, "client", mine)) as rc:
        rc.wait_for_engines(1, timeout=WAIT)
        assert rc.load_balanced_view().map_sync(lambda x: -x, range(10)) == [-x for x in range(10)]


# -- --authorized-keys ----------------------------------------------------------------------------


def test_authorized_keys_admit_another_client_and_engine(processes, tmp_path):
    client_public, client_secret = new_keypair()
    engine_public, engine_secret = new_keypair()
    keys = tmp_path / "authorized_keys"
    keys.write_text(f"# alice's laptop\nclient {client_public}\n\n\tengine  {engine_public}  \n")
    conn = str(tmp_path / "c.json")
    processes.broker(conn, "--curve", "--authorized-keys", keys)
    info = read_json(conn)
    # An engine of its own key pair registers.
    own = write_json(tmp_path / "own-engine.json", {
        "version": 1, "engine": info["engine"],
        "curve": {"server_public": info["curve"]["server_public"], "engine_public": engine_public,
                  "engine_secret": engine_secret}})
    engine = processes.engine(own)
    alice_file = client_file(tmp_path, info, "alice", {"server_public": info["curve"]["server_public"],
                                                       "client_public": client_public,
                                                       "client_secret": client_secret})
    with zfarm.Client(alice_file) as alice:
        alice.wait_for_engines(1, timeout=WAIT)
        marker = tmp_path / "alice-ran"
        assert alice.load_balanced_view().apply_sync(leave_mark, str(marker)) == "ran"
        assert marker.read_text() == "ran"
        assert alice[:].apply_sync(os.getpid) == [engine.pid]
        assert alice.queue_status()["auth_refused"] == 0
    # A listed client key does not open the engine port, nor the reverse.
    swapped = write_json(tmp_path / "swapped.json", {
        "version": 1, "engine": info["engine"],
        "curve": {"server_public": info["curve"]["server_public"], "engine_public": client_public,
                  "engine_secret": client_secret}})
    with zfarm.Client(conn) as rc:
        refused = status_of(rc, "auth_refused")
        processes.engine(swapped)
        wait_until(lambda: status_of(rc, "auth_refused") > refused, what="the client key refused as an engine")
        assert len(rc.ids) == 1


# -- limits ---------------------------------------------------------------------------------------

MAX_FRAMES = 8
MAX_HEADER = 256
MAX_MESSAGE = 1 << 20


def submit_frames(f, *args):
    """The payload frames of a load-balanced apply, as the client makes them."""
    return _serialize.dumps(("apply", _serialize.dumps_function(f), args, {}))


@pytest.fixture()
def no_shm(monkeypatch):
    """Large buffers through the socket, where the limits apply."""
    monkeypatch.setenv("ZFARM_SHM", "0")


@pytest.fixture(scope="module")
def limited_cluster():
    with running_cluster(1, curve=True, broker_args=["--max-frames", str(MAX_FRAMES),
                                                     "--max-header-bytes", str(MAX_HEADER),
                                                     "--max-message-bytes", str(MAX_MESSAGE)]) as c:
        yield c


def still_serves(c, rc):
    assert c.broker.poll() is None
    assert rc.load_balanced_view().apply_sync(lambda: "still fine") == "still fine"


def test_too_many_frames_get_an_error_and_are_counted(limited_cluster, tmp_path):
    with limited_cluster.connect(timeout=WAIT) as rc:
        bad = status_of(rc, "bad_messages")
        marker = tmp_path / "marker"
        # A Submit with signature + header + 1 + 8 payload frames: 11 > 8.
        rc._core.send(MSG_SUBMIT, 7, [-1], 0, "", submit_frames(leave_mark, str(marker)) + [b"x"] * 8)
        wait_until(lambda: status_of(rc, "bad_messages") == bad + 1, what="the message counted")
        wait_until(lambda: any("frames exceed the limit of 8" in e for e in rc.errors), what="an Error answer")
        still_serves(limited_cluster, rc)
        assert not marker.exists()


def test_a_task_with_too_many_frames_ends_with_an_error(limited_cluster, no_shm):
    np = pytest.importorskip("numpy")

    with limited_cluster.connect(timeout=WAIT) as rc:
        # Each array is large enough to travel as a frame of its own.
        arrays = [np.arange(_serialize.OUT_OF_BAND_MIN // 8 + 1, dtype=np.float64) + i for i in range(MAX_FRAMES)]
        ar = rc.load_balanced_view().apply_async(lambda *a: len(a), *arrays)
        with pytest.raises(zfarm.TaskRejected, match="frames exceed the limit"):
            ar.get(timeout=WAIT)
        still_serves(limited_cluster, rc)


def test_a_header_over_the_limit_gets_an_error_and_is_counted(limited_cluster):
    with limited_cluster.connect(timeout=WAIT) as rc:
        bad = status_of(rc, "bad_messages")
        rc._core.send(MSG_STATUS, 9, [], 0, "x" * (MAX_HEADER + 10), [])
        wait_until(lambda: status_of(rc, "bad_messages") == bad + 1, what="the message counted")
        wait_until(lambda: any("exceeds limit of 256" in e for e in rc.errors), what="an Error answer")
        still_serves(limited_cluster, rc)


def test_a_frame_over_max_message_bytes_is_refused(limited_cluster, tmp_path, no_shm):
    zmq = pytest.importorskip("zmq")
    from zmq.utils.monitor import recv_monitor_message

    with limited_cluster.connect(timeout=WAIT) as rc:
        assert rc._core.max_message_bytes == MAX_MESSAGE  # from the connection file
        marker = tmp_path / "marker"
        big = b"x" * (MAX_MESSAGE + 1)
        # The client refuses to send it, with the numbers, and keeps no task.
        with pytest.raises(ValueError, match=f"exceeds the broker's limit of {MAX_MESSAGE} bytes"):
            rc.load_balanced_view().apply_async(leave_mark, str(marker), big)
        assert rc.outstanding == 0
        # A peer that sends it anyway (pyzmq, with the client keys) is cut
        # off by libzmq before the frame is buffered.
        keys = read_json(limited_cluster.connection_file)["curve"]
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        try:
            sock.linger = 0
            sock.curve_serverkey = keys["server_public"].encode()
            sock.curve_publickey = keys["client_public"].encode()
            sock.curve_secretkey = keys["client_secret"].encode()
            sock.connect(rc.connection_info["client"])
            header = bytes([0x96, MSG_SUBMIT, 11, 0x91, 0xFF, 0, 0, 0xA0])  # [4, 11, [-1], 0, 0, ""]
            sock.send_multipart([b"ZFRM\x01", header, *submit_frames(leave_mark, str(marker)), big])
            seen = []
            while zmq.EVENT_DISCONNECTED not in seen:
                assert monitor.poll(WAIT * 1000), f"no disconnect; events so far: {seen}"
                seen.append(recv_monitor_message(monitor)["event"])
            assert seen[0] == zmq.EVENT_HANDSHAKE_SUCCEEDED  # admitted, then cut off
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            ctx.term()
        # The broker serves on, and the cut-off task never ran.
        still_serves(limited_cluster, rc)
        assert rc[:].apply_sync(os.getpid) == [limited_cluster.engines[0].pid]
        assert not marker.exists()
