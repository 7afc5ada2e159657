"""Cluster life cycle, bad input and engine death, with real processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

import zfarm
from conftest import WAIT, pid_alive


def test_client_without_arguments_starts_and_stops_its_own_cluster(tmp_path):
    script = textwrap.dedent(
        """
        import json, os, sys, zfarm
        rc = zfarm.Client(n=2)
        pids = [p.pid for p in rc._cluster.processes()]
        ok = rc.load_balanced_view().map_sync(lambda x: x + 1, range(10)) == list(range(1, 11))
        print(json.dumps({"pids": pids, "ids": rc.ids, "ok": ok}))
        rc.close()
        """
    )
    env = dict(os.environ)
    env.pop("ZFARM_CONNECTION_FILE", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ok"]
    assert report["ids"] == [0, 1]
    assert len(report["pids"]) == 3  # broker and two engines
    # Its children were reaped by the child itself, so they are gone now.
    assert not any(pid_alive(p) for p in report["pids"])


def test_cluster_processes_die_with_a_killed_client():
    script = textwrap.dedent(
        """
        import json, sys, zfarm
        rc = zfarm.Client(n=1)
        print(json.dumps([p.pid for p in rc._cluster.processes()]), flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(proc.stdout.readline())
        proc.kill()
        proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        # They are children of the killed process, reparented to init, which reaps them.
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids)


def test_cluster_context_manager_gives_a_client():
    cluster = zfarm.Cluster(n=2, heartbeat_ms=200)
    with cluster as rc:
        assert isinstance(rc, zfarm.Client)
        assert rc[:].apply_sync(lambda: 7) == [7, 7]
    assert rc.closed
    assert all(p.poll() is not None for p in cluster.processes())
    assert not os.path.exists(cluster.connection_file)


def test_connection_file_is_private(cluster):
    mode = os.stat(cluster.connection_file).st_mode & 0o777
    assert mode == 0o600
    info = json.load(open(cluster.connection_file))
    # Unix-domain sockets in the cluster's own directory, which only this user may enter.
    folder = os.path.dirname(cluster.connection_file)
    assert info["client"] == "ipc://" + os.path.join(folder, "client.sock")
    assert info["engine"] == "ipc://" + os.path.join(folder, "engine.sock")
    assert os.stat(folder).st_mode & 0o777 == 0o700
    assert os.stat(folder).st_uid == os.getuid()


def test_local_endpoints_fall_back_to_loopback_tcp_for_long_paths():
    from zfarm._cluster import local_endpoints

    short = local_endpoints("/tmp/zfarm-abc")
    assert short == ["--client-endpoint", "ipc:///tmp/zfarm-abc/client.sock",
                     "--engine-endpoint", "ipc:///tmp/zfarm-abc/engine.sock"]
    long = local_endpoints("/tmp/" + "d" * 100)  # over the 107 bytes of a socket address
    assert long == ["--client-endpoint", "tcp://127.0.0.1:*", "--engine-endpoint", "tcp://127.0.0.1:*"]


def test_a_cluster_in_a_deep_temporary_folder_still_runs(tmp_path, monkeypatch):
    deep = tmp_path / ("d" * 110)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    cluster = zfarm.Cluster(n=1, heartbeat_ms=200)
    with cluster as rc:
        info = json.load(open(cluster.connection_file))
        assert rc[:].apply_sync(lambda: 5) == [5]
    assert info["client"].startswith("tcp://127.0.0.1:")
    assert info["engine"].startswith("tcp://127.0.0.1:")


def test_garbage_frames_are_counted_and_a_normal_task_still_runs(own_cluster):
    c = own_cluster(n=1)
    rc = c.connect(timeout=WAIT)
    try:
        before = rc.queue_status()["bad_messages"]
        core = rc._core
        core.send_raw([b"hello"])  # one frame, no header
        core.send_raw([b"XXXX\x01", b"\x96\x04\x00\x90\x00\x00\xa0"])  # bad signature
        core.send_raw([b"ZFRM\x63", b"\x96\x04\x00\x90\x00\x00\xa0"])  # wrong version
        core.send_raw([b"ZFRM\x01", b"\xc1\xc1\xc1"])  # not msgpack
        core.send_raw([b"ZFRM\x01", b"\xdd\xff\xff\xff\xff"])  # announces a 4G-item array
        core.send_raw([b"ZFRM\x01", b"\x96\xcc\xc8\x00\x90\x00\x00\xa0"])  # unknown type 200
        core.send_raw([b"ZFRM\x01", b"\x93\x01\x02\x03"])  # too short a header
        deadline = time.monotonic() + WAIT
        while rc.queue_status()["bad_messages"] < before + 7 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rc.queue_status()["bad_messages"] == before + 7
        assert rc.load_balanced_view().apply_sync(lambda: "still fine") == "still fine"
        assert c.broker.poll() is None
        assert len(rc.errors) >= 1  # the broker answered with Error messages
    finally:
        rc.close()


def test_killed_engine_fails_its_targeted_work_with_engine_died(own_cluster):
    c = own_cluster(n=2)
    rc = c.connect(timeout=WAIT)
    try:
        victim = rc.ids[0]
        pid = rc[victim].apply_sync(os.getpid)
        running = rc[victim].execute("while True: pass")
        queued = rc[victim].apply_async(abs, -1)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(zfarm.EngineDiedError):
            running.get(timeout=WAIT)
        with pytest.raises(zfarm.EngineDiedError):
            queued.get(timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while victim in rc.ids and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victim not in rc.ids
        # The survivor still works.
        assert rc.load_balanced_view().apply_sync(lambda: 1) == 1
    finally:
        rc.close()


def test_shutdown_stops_broker_and_engines(own_cluster):
    c = own_cluster(n=2)
    rc = c.connect(timeout=WAIT)
    rc.shutdown()
    for p in c.processes():
        p.wait(WAIT)
    assert all(p.returncode is not None for p in c.processes())


def test_binaries_have_help():
    for name in ("zfarm-broker", "zfarm-engine"):
        out = subprocess.run([zfarm._cluster.find_binary(name), "--help"], capture_output=True, text=True,
                             timeout=WAIT)
        assert out.returncode == 0
        assert "--connection-file" in out.stdout
