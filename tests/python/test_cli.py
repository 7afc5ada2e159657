"""The zfarm command and its launchers: local, mpi, ssh (a fake ssh, and a real sshd on
127.0.0.1), Slurm (fake sbatch/srun, and a real one-node Slurm: munged, slurmctld, slurmd).

Every test uses its own profile directory.  Clusters started by the command
outlive it (their processes are reparented); this module makes the test
process a child subreaper so those orphans come back to it and are reaped.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest

import zfarm
from conftest import end_process, wait_until
from zfarm import _launchers, _profiles

WAIT = 60.0
HEARTBEAT = "200"
_PR_SET_CHILD_SUBREAPER = 36


def _children() -> set:
    me = os.getpid()
    out = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                s = f.read()
        except OSError:
            continue
        if int(s[s.rfind(")") + 2:].split()[1]) == me:
            out.add(int(name))
    return out


@pytest.fixture(scope="module", autouse=True)
def subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    before = _children()
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        # Whatever the clusters left behind must end by itself (stop ran);
        # reap it, bounded.
        deadline = time.monotonic() + WAIT
        left = _children() - before
        while left and time.monotonic() < deadline:
            for pid in list(left):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    left.discard(pid)
            left &= _children()
            time.sleep(0.05)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        assert not left, f"processes left running: {sorted(left)}"


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """Environment for the command: a private profile dir, fakes first on PATH."""
    pdir = tmp_path / "profiles"
    fakes = tmp_path / "bin"
    fakes.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ZFARM_PROFILE_DIR", str(pdir))
    e = dict(os.environ)
    e["ZFARM_PROFILE_DIR"] = str(pdir)
    e["HOME"] = str(home)
    e["FAKE_DIR"] = str(tmp_path)
    e["PATH"] = os.pathsep.join([str(fakes), os.path.dirname(sys.executable), e.get("PATH", "")])
    e.pop("ZFARM_PROFILE", None)
    return {"env": e, "dir": pdir, "bin": fakes, "home": home, "tmp": tmp_path}


def zfarm_cmd(env, *args, timeout=WAIT * 2):
    return subprocess.run([sys.executable, "-m", "zfarm", *args], env=env["env"], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def fake(env, name, body):
    path = env["bin"] / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def gone(pids, timeout=WAIT):
    procs = [{"pid": p, "start": None} for p in pids]
    return not _profiles.wait_gone(procs, timeout)


def engine_pids(status):
    return [int(e["host"].rsplit(":", 1)[1]) for e in status["engines"]]


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def stop_at_end(env):
    """Stops every profile a test started, even when it failed half-way."""
    yield
    for name in _profiles.list_profiles():
        zfarm_cmd(env, "cluster", "stop", "--profile", name)


# -- local ------------------------------------------------------------------------------


def test_start_status_stop_local_cluster(env, stop_at_end):
    r = ok(zfarm_cmd(env, "cluster", "start", "-n", "2", "--profile", "t", "--heartbeat-ms", HEARTBEAT))
    assert "engines registered" in r.stdout
    d = env["dir"]
    assert mode(d) == 0o700
    for name in ("t.json", "t.engine.json", "t.state.json", "t.broker.log", "t.engines.log"):
        assert mode(d / name) == 0o600, name
    state = json.loads((d / "t.state.json").read_text())
    broker = state["broker"]["pid"]
    # The broker outlived the command, in a session of its own.
    assert _profiles.same_process(broker, state["broker"]["start"])
    assert os.getsid(broker) == broker

    again = zfarm_cmd(env, "cluster", "start", "-n", "1", "--profile", "t")
    assert again.returncode == 1 and "already running" in again.stderr

    with zfarm.Client(profile="t") as rc:
        assert sorted(rc.load_balanced_view().map_sync(abs, range(-10, 0))) == list(range(1, 11))
        with pytest.raises(zfarm.RemoteError):
            rc.load_balanced_view().apply_sync(lambda: 1 / 0)
    s = json.loads(ok(zfarm_cmd(env, "cluster", "status", "--profile", "t", "--json", "--interval", "0.1")).stdout)
    assert len(s["engines"]) == 2 and s["done"] >= 11 and s["failed"] >= 1
    assert s["throughput"] >= 0 and s["queued"] == 0 and s["launcher"] == "local"
    text = ok(zfarm_cmd(env, "cluster", "status", "--profile", "t", "--interval", "0")).stdout
    assert "engines: 2" in text and "throughput:" in text and "failed" in text
    assert "t\trunning\tlocal" in ok(zfarm_cmd(env, "cluster", "list")).stdout

    # One more engine by hand, in the foreground: it joins the same cluster.
    extra = subprocess.Popen([sys.executable, "-m", "zfarm", "engine", "--profile", "t", "--heartbeat-ms",
                              HEARTBEAT, "--quiet"], env=env["env"], stdin=subprocess.DEVNULL)
    try:
        with zfarm.Client(profile="t") as rc:
            assert len(rc.wait_for_engines(3, timeout=WAIT)) == 3
        pids = [broker] + engine_pids(s)
        ok(zfarm_cmd(env, "cluster", "stop", "--profile", "t"))
        assert extra.wait(WAIT) == 0  # the broker's Shutdown reached it too
    finally:
        if extra.poll() is None:
            extra.kill()
            extra.wait(WAIT)
    assert gone(pids)
    assert not (d / "t.json").exists() and not (d / "t.state.json").exists()
    r = zfarm_cmd(env, "cluster", "status", "--profile", "t")
    assert r.returncode == 1 and "no cluster is running" in r.stderr
    with pytest.raises(zfarm.ZfarmError, match="no cluster is running"):
        zfarm.Client(profile="t")


def test_stop_after_the_broker_died_ends_the_engines(env, stop_at_end):
    ok(zfarm_cmd(env, "cluster", "start", "-n", "2", "--profile", "k", "--heartbeat-ms", HEARTBEAT))
    state = _profiles.read_state("k")
    engines = [e["pid"] for e in state["engines"]]
    os.kill(state["broker"]["pid"], 9)
    assert gone([state["broker"]["pid"]])
    r = zfarm_cmd(env, "cluster", "status", "--profile", "k")
    assert r.returncode == 1 and "not running any more" in r.stderr
    # No broker to pass Shutdown on: stop signals the engines itself.
    ok(zfarm_cmd(env, "cluster", "stop", "--profile", "k"))
    assert gone(engines)
    assert _profiles.list_profiles() == []


def test_stop_interrupts_an_engine_stuck_in_a_task(env, stop_at_end):
    ok(zfarm_cmd(env, "cluster", "start", "-n", "1", "--profile", "h", "--heartbeat-ms", HEARTBEAT))
    with zfarm.Client(profile="h") as rc:
        rc.load_balanced_view().apply(time.sleep, 3600)
        deadline = time.monotonic() + WAIT
        while rc.queue_status()["engines"][0]["inflight"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        engine = engine_pids(rc.queue_status())[0]
    # The engine cannot act on Shutdown while the task runs: after the grace
    # period SIGTERM interrupts the task and the engine leaves.
    r = ok(zfarm_cmd(env, "cluster", "stop", "--profile", "h", "--grace", "1"))
    assert f"signalled [{engine}]" in r.stdout
    assert gone([engine])


def test_start_fails_fast_when_the_engines_cannot_start(env, stop_at_end):
    fake(env, "broken-engine", "echo 'broken engine' >&2; exit 3\n")
    r = zfarm_cmd(env, "cluster", "start", "-n", "2", "--profile", "b", "--engine-cmd",
                  str(env["bin"] / "broken-engine"), "--timeout", str(WAIT * 5))
    assert r.returncode == 1 and "exited before 2 registered" in r.stderr
    assert "broken engine" in (env["dir"] / "b.engines.log").read_text()
    assert _profiles.list_profiles() == [] and not (env["dir"] / "b.json").exists()


def test_bad_profile_name_and_profile_dir_mode(env, tmp_path, monkeypatch):
    r = zfarm_cmd(env, "cluster", "stop", "--profile", "../x")
    assert r.returncode == 1 and "bad profile name" in r.stderr
    r = zfarm_cmd(env, "cluster", "stop", "--profile", "nothing")
    assert r.returncode == 1 and "no cluster is known" in r.stderr
    (env["dir"] / "bad.state.json").write_text("{not json")
    r = zfarm_cmd(env, "cluster", "status", "--profile", "bad")
    assert r.returncode == 1 and "damaged" in r.stderr
    (env["dir"] / "bad.state.json").unlink()
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o755)
    monkeypatch.setenv("ZFARM_PROFILE_DIR", str(wide))
    assert _profiles.profile_dir() == str(wide) and mode(wide) == 0o700


def test_non_loopback_engine_port_turns_curve_on(env, stop_at_end):
    ok(zfarm_cmd(env, "cluster", "start", "-n", "1", "--profile", "p", "--ip", "0.0.0.0",
                 "--heartbeat-ms", HEARTBEAT))
    info = json.loads((env["dir"] / "p.json").read_text())
    assert info["engine"].startswith("tcp://0.0.0.0:")
    assert {"server_public", "client_public", "client_secret"} <= set(info["curve"])
    # What other hosts' engines are given holds no client or server secret.
    engine_info = json.loads((env["dir"] / "p.engine.json").read_text())
    assert sorted(engine_info["curve"]) == ["engine_public", "engine_secret", "server_public"]
    assert mode(env["dir"] / "p.json") == 0o600 and mode(env["dir"] / "p.engine.json") == 0o600
    with zfarm.Client(profile="p") as rc:
        assert rc.load_balanced_view().apply_sync(abs, -3) == 3
    ok(zfarm_cmd(env, "cluster", "stop", "--profile", "p"))


def test_engine_connection_info_rewrites_wildcard_and_keeps_only_engine_keys():
    info = {"version": 1, "client": "tcp://127.0.0.1:1", "engine": "tcp://0.0.0.0:5555", "pid": 1,
            "curve": {k: k.upper() for k in ("server_public", "server_secret", "client_public",
                                             "client_secret", "engine_public", "engine_secret")}}
    out = _profiles.engine_connection_info(info, "head.example")
    assert out["engine"] == "tcp://head.example:5555"
    assert sorted(out["curve"]) == ["engine_public", "engine_secret", "server_public"]
    assert "client" not in out
    assert _profiles.engine_connection_info(dict(info, engine="tcp://10.0.0.1:7"), "x")["engine"] == "tcp://10.0.0.1:7"


def test_python_m_zfarm_is_the_command_and_demo_still_runs(env):
    assert "cluster" in ok(zfarm_cmd(env, "--help")).stdout
    script = os.path.join(os.path.dirname(sys.executable), "zfarm")
    assert os.access(script, os.X_OK), "the zfarm console script is installed"
    assert "--engines" in ok(subprocess.run([sys.executable, "-m", "zfarm.demo", "--help"], capture_output=True,
                                            text=True, timeout=WAIT)).stdout


# -- mpi ----------------------------------------------------------------------------------


def _has_mpi() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return shutil.which("mpiexec") is not None


@pytest.mark.skipif(not _has_mpi(), reason="needs mpiexec and mpi4py (tools/setup.sh installs them)")
def test_mpi_engines_allreduce_across_ranks(env, stop_at_end):
    # As root, OpenMPI needs --allow-run-as-root: the launcher adds it.
    ok(zfarm_cmd(env, "cluster", "start", "-n", "2", "--engines", "mpi", "--profile", "m",
                 "--heartbeat-ms", HEARTBEAT))
    job = _profiles.read_state("m")["mpiexec"]
    cmd = job["args"]
    assert cmd[1:3] == ["-n", "2"] and "--connection-file" in cmd

    def rank_and_sum():
        from zfarm import mpi

        return mpi.rank(), mpi.size(), mpi.comm().allreduce(mpi.rank())

    with zfarm.Client(profile="m") as rc:
        out = rc[:].apply_sync(rank_and_sum)
    assert sorted(r for r, _, _ in out) == [0, 1]
    assert all(size == 2 and total == 0 + 1 for _, size, total in out)
    ok(zfarm_cmd(env, "cluster", "stop", "--profile", "m"))
    assert gone([job["pid"]])
    assert _profiles.list_profiles() == []


# -- ssh ----------------------------------------------------------------------------------

FAKE_SSH = """\
# Stands in for ssh: records the call, skips options, runs the command here.
echo "$@" >> "$FAKE_DIR/ssh.log"
while [ $# -gt 0 ]; do case "$1" in -o|-p|-i|-l) shift 2 ;; -*) shift ;; *) break ;; esac; done
shift
exec sh -c "$*"
"""


def test_ssh_plan_cycles_through_the_hosts_file(tmp_path):
    launcher = _launchers.SSHLauncher([("a", 2), ("b", 1)], engine="/opt/zfarm-engine")
    assert launcher.plan(2) == {"a": 2}
    assert launcher.plan(5) == {"a": 4, "b": 1}
    cmd = launcher.command("a", 2, "/p/x.engine.json", ["--prefetch", "4"])
    assert cmd[:2] == ["ssh", "a"] and cmd[2].startswith("sh -c ")
    script = launcher.remote_script(2, "/p/x.engine.json", ["--prefetch", "4"])
    assert '/opt/zfarm-engine --connection-file "$f" --prefetch 4' in script
    assert "umask 077" in script and 'f="$d/x.engine.json"' in script


def test_hosts_file_parsing(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# cluster\nnode1 4\nnode2\n\nnode3 2  # fast\n")
    assert _launchers.read_hosts_file(str(f)) == [("node1", 4), ("node2", 1), ("node3", 2)]
    f.write_text("node1 many\n")
    with pytest.raises(zfarm.ZfarmError, match="hosts:1"):
        _launchers.read_hosts_file(str(f))


def test_ssh_launcher_starts_engines_on_each_host(env, stop_at_end):
    fake(env, "ssh", FAKE_SSH)
    hosts = env["tmp"] / "hosts"
    hosts.write_text("nodeA 2\nnodeB   # one engine\n")
    # A loopback engine port: the fake ssh runs the engines on this machine.
    # No -n: as many engines as the hosts file lists.
    ok(zfarm_cmd(env, "cluster", "start", "--engines", "ssh", "--hosts", str(hosts), "--ssh",
                 "ssh -o BatchMode=yes", "--profile", "s", "--ip", "127.0.0.1", "--heartbeat-ms", HEARTBEAT))
    calls = (env["tmp"] / "ssh.log").read_text().splitlines()
    assert [c.split()[:3] for c in calls] == [["-o", "BatchMode=yes", "nodeA"], ["-o", "BatchMode=yes", "nodeB"]]
    assert "zfarm-engine" in calls[0] and "--connection-file" in calls[0]
    remote_file = env["home"] / ".zfarm" / "s.engine.json"
    assert mode(remote_file) == 0o600 and json.loads(remote_file.read_text())["engine"].startswith("tcp://")
    state = _profiles.read_state("s")
    assert [(r["host"], len(r["pids"])) for r in state["remote"]] == [("nodeA", 2), ("nodeB", 1)]
    pids = [p for r in state["remote"] for p in r["pids"]]
    with zfarm.Client(profile="s") as rc:
        assert len(rc.ids) == 3
        assert sorted(rc[:].apply_sync(os.getpid)) == sorted(pids)
    ok(zfarm_cmd(env, "cluster", "stop", "--profile", "s"))
    assert gone(pids)


def test_ssh_failure_on_one_host_stops_the_engines_of_the_others(env, stop_at_end):
    fake(env, "ssh", 'case "$*" in *badhost*) echo "badhost: unreachable" >&2; exit 255 ;; esac\n' + FAKE_SSH)
    hosts = env["tmp"] / "hosts"
    hosts.write_text("nodeA 1\nbadhost 1\n")
    r = zfarm_cmd(env, "cluster", "start", "--engines", "ssh", "--hosts", str(hosts), "--profile", "f",
                  "--ip", "127.0.0.1", "--heartbeat-ms", HEARTBEAT)
    assert r.returncode == 1 and "ssh badhost failed with exit code 255: badhost: unreachable" in r.stderr
    assert _profiles.list_profiles() == [] and not (env["dir"] / "f.json").exists()
    # The clean-up went back to nodeA and ended the engine started there.
    last = (env["tmp"] / "ssh.log").read_text().splitlines()[-1]
    assert last.startswith("nodeA ") and "kill" in last
    pids = [int(p) for p in re.search(r"for p in ([0-9 ]+);", last).group(1).split()]
    assert len(pids) == 1 and gone(pids)


@pytest.fixture()
def sshd(tmp_path):
    """A real OpenSSH server on 127.0.0.1 for this test only: its own host key,
    one authorised client key, and HOME set to a folder of the test, so what
    the launcher writes "remotely" stays in tmp_path."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    assert os.path.exists(binary), "sshd missing: tools/setup.sh installs openssh-server"
    d = tmp_path / "sshd"
    home = d / "home"
    home.mkdir(parents=True)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True,
                       timeout=WAIT, stdin=subprocess.DEVNULL)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (d / "sshd_config").write_text(textwrap.dedent(f"""\
        ListenAddress 127.0.0.1:{port}
        HostKey {d / "host_key"}
        AuthorizedKeysFile {d / "authorized_keys"}
        PidFile none
        UsePAM no
        StrictModes no
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PermitRootLogin prohibit-password
        SetEnv HOME={home}
        """))
    os.makedirs("/run/sshd", exist_ok=True)  # its privilege separation directory
    server = subprocess.Popen([binary, "-D", "-e", "-f", str(d / "sshd_config")], stdin=subprocess.DEVNULL,
                              stderr=open(d / "sshd.log", "wb"))
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert server.poll() is None, (d / "sshd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "sshd did not start listening"
                time.sleep(0.05)
        ssh = (f"ssh -p {port} -i {d / 'client_key'} -o BatchMode=yes -o StrictHostKeyChecking=no "
               f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")
        yield {"ssh": ssh, "home": home, "log": d / "sshd.log"}
    finally:
        end_process(server)


def test_ssh_launcher_through_a_real_sshd_with_curve(env, sshd, stop_at_end):
    # A real ssh session on this machine stands for another host: the engine
    # port is on all interfaces, so CURVE is on and the engines can only get in
    # with the keys the launcher sent them over ssh.
    hosts = env["tmp"] / "hosts"
    hosts.write_text("127.0.0.1 2\n")
    ok(zfarm_cmd(env, "cluster", "start", "--engines", "ssh", "--hosts", str(hosts), "--ssh", sshd["ssh"],
                 "--profile", "r", "--ip", "0.0.0.0", "--location", "127.0.0.1", "--heartbeat-ms", HEARTBEAT))
    remote_file = sshd["home"] / ".zfarm" / "r.engine.json"
    assert mode(remote_file) == 0o600
    sent = json.loads(remote_file.read_text())
    assert sent["engine"].startswith("tcp://127.0.0.1:")
    assert sorted(sent["curve"]) == ["engine_public", "engine_secret", "server_public"]
    pids = [p for r in _profiles.read_state("r")["remote"] for p in r["pids"]]
    assert len(pids) == 2
    with zfarm.Client(profile="r") as rc:
        assert len(rc.wait_for_engines(2, timeout=WAIT)) == 2
        # Each engine runs in an ssh session (sshd set SSH_CONNECTION and HOME).
        env_seen = rc[:].apply_sync(lambda: (os.getpid(), os.environ.get("SSH_CONNECTION", ""),
                                             os.environ.get("HOME")))
        assert sorted(p for p, _, _ in env_seen) == sorted(pids)
        assert all(c.startswith("127.0.0.1 ") and h == str(sshd["home"]) for _, c, h in env_seen)
        assert rc.load_balanced_view().map_sync(abs, range(-20, 0)) == list(range(20, 0, -1))
    ok(zfarm_cmd(env, "cluster", "stop", "--profile", "r"))
    assert gone(pids)


# -- slurm --------------------------------------------------------------------------------

FAKE_SBATCH = """\
# Stands in for sbatch: runs the script here, in the background; prints a job id.
echo "$@" >> "$FAKE_DIR/sbatch.log"
for a; do script="$a"; done
cp "$script" "$FAKE_DIR/submitted.sbatch"
sh "$script" > "$FAKE_DIR/job.out" 2>&1 < /dev/null &
echo "4242;fakecluster"
"""
FAKE_SRUN = """\
# Stands in for srun: starts --ntasks copies of the command with SLURM_PROCID set.
n=1
while [ $# -gt 0 ]; do case "$1" in --ntasks=*) n="${1#--ntasks=}"; shift ;; -*) shift ;; *) break ;; esac; done
i=0
while [ $i -lt "$n" ]; do SLURM_PROCID=$i SLURM_NTASKS=$n "$@" & i=$((i+1)); done
wait
"""
FAKE_SCANCEL = """\
echo "$@" >> "$FAKE_DIR/scancel.log"
"""


def test_slurm_custom_template_keeps_shell_variables(tmp_path):
    engine_file = tmp_path / "x.engine.json"
    engine_file.write_text('{"version": 1, "engine": "tcp://head:5556"}')
    template = "#!/bin/bash\n#SBATCH -n ${n}\necho job $SLURM_JOB_ID to ${endpoint}\nsrun ${engine_command}\n"
    script = _launchers.SlurmLauncher(template=template, engine="/opt/zfarm-engine").script(
        3, str(engine_file), ["--prefetch", "1"], str(tmp_path / "log"))
    assert script == ("#!/bin/bash\n#SBATCH -n 3\necho job $SLURM_JOB_ID to tcp://head:5556\n"
                      f"srun /opt/zfarm-engine --connection-file {engine_file} --prefetch 1\n")


def test_slurm_script_and_engine_start_up(env, stop_at_end):
    fake(env, "sbatch", FAKE_SBATCH)
    fake(env, "srun", FAKE_SRUN)
    fake(env, "scancel", FAKE_SCANCEL)
    ok(zfarm_cmd(env, "cluster", "start", "-n", "2", "--engines", "slurm", "--profile", "j", "--ip", "127.0.0.1",
                 "--slurm-option=--time=00:10:00", "--heartbeat-ms", HEARTBEAT))
    script = (env["tmp"] / "submitted.sbatch").read_text()
    assert script.startswith("#!/bin/sh\n")
    for line in ("#SBATCH --job-name=zfarm-j", "#SBATCH --ntasks=2", "#SBATCH --time=00:10:00",
                 f"#SBATCH --output={env['dir']}/j.engines.log"):
        assert line in script.splitlines(), line
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and "--ntasks=2" in srun[0] and "zfarm-engine" in srun[0]
    assert f"--connection-file {env['dir']}/j.engine.json" in srun[0] and "--heartbeat-ms 200" in srun[0]
    assert (env["tmp"] / "sbatch.log").read_text().split()[0] == "--parsable"
    state = _profiles.read_state("j")
    assert state["job_id"] == "4242" and state["launcher"] == "slurm"

    with zfarm.Client(profile="j") as rc:
        ranks = rc[:].apply_sync(lambda: __import__("zfarm").mpi.rank())
        status = rc.queue_status()
    assert sorted(ranks) == [0, 1]
    ok(zfarm_cmd(env, "cluster", "stop", "--profile", "j"))
    assert (env["tmp"] / "scancel.log").read_text().split() == ["4242"]
    assert gone(engine_pids(status))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Runs a command as its child and reaps every orphan under it.  slurmd's job
# steps (slurmstepd) and their tasks are reparented to the nearest subreaper;
# without this that is the test process, which would leave them zombies until
# the module ends, and slurmstepd waits for its job's processes to be gone
# (zombies included) before the job may leave the queue.  SIGTERM is passed
# on to the command.  If the test process dies without cleaning up (pytest
# killed by a signal), the kernel sends SIGHUP (PR_SET_PDEATHSIG): then the
# command and every orphan handed to this reaper are killed, again after
# each one reaped (its own children come here next), until none is left.
REAPER = """\
import ctypes, os, signal, sys
libc = ctypes.CDLL(None)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
libc.prctl(1, signal.SIGHUP, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the test process is already gone
child = os.fork()
if child == 0:
    os.execv(sys.argv[2], sys.argv[2:])
orphaned = False

def kill_all():
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid():
                os.kill(int(entry), signal.SIGKILL)
        except (ValueError, OSError):
            pass

def on_hup(*_):
    global orphaned
    orphaned = True
    kill_all()

signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGTERM))
signal.signal(signal.SIGHUP, on_hup)
code = 1
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        sys.exit(code)
    if pid == child:
        code = os.waitstatus_to_exitcode(status)
    if orphaned:
        kill_all()
"""


def _die_with_parent():
    # In the child before exec: SIGTERM if the test process dies first.
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def test_reaper_ends_the_tree_under_it_when_the_test_process_dies(tmp_path):
    # A stand-in for a killed pytest starts the reaper over a shell that
    # leaves a child (sleep a) and an orphan (sleep b, reparented to the
    # reaper); SIGKILL to the stand-in must end all of them.
    (tmp_path / "tree.sh").write_text("sleep 300 & echo $! > a.tmp; mv a.tmp a\n"
                                      "(sleep 300 & echo $! > b.tmp; mv b.tmp b)\n"
                                      "exec sleep 300\n")
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import os, subprocess, sys, time\n"
         "p = subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid()), '/bin/sh', 'tree.sh'])\n"
         "print(p.pid, flush=True)\n"
         "time.sleep(300)\n", REAPER],
        cwd=tmp_path, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        reaper = int(stand_in.stdout.readline())
        wait_until(lambda: (tmp_path / "a").exists() and (tmp_path / "b").exists(), what="the shell's children")
        sleeps = [int((tmp_path / n).read_text()) for n in ("a", "b")]
        for pid in sleeps:
            os.kill(pid, 0)  # running
    finally:
        stand_in.kill()
        stand_in.wait(WAIT)
    # The reaper is now this process's child (the module's subreaper).
    wait_until(lambda: os.waitpid(reaper, os.WNOHANG)[0] == reaper, what="the reaper's exit")
    assert gone(sleeps)


@pytest.fixture()
def slurm(tmp_path):
    """A real Slurm of one node (this machine) for this test only: munged with
    its own key and socket, slurmctld and slurmd in the foreground with their
    own configuration, ports, state and logs under tmp_path.  Yields the
    environment that points the Slurm commands at it."""
    for daemon in ("munged", "slurmctld", "slurmd"):
        assert shutil.which(daemon) or os.path.exists(f"/usr/sbin/{daemon}"), \
            f"{daemon} missing: tools/setup.sh installs munge, slurmctld and slurmd"
    if os.geteuid() != 0:
        pytest.skip("slurmd launches jobs only when it runs as root")
    d = tmp_path / "slurm"
    for sub in ("munge", "state", "spool"):
        (d / sub).mkdir(parents=True)
    os.chmod(d / "munge", 0o700)
    sbin = lambda name: shutil.which(name) or f"/usr/sbin/{name}"  # noqa: E731
    subprocess.run(["mungekey", "--create", f"--keyfile={d / 'munge' / 'key'}", "--force"], check=True,
                   timeout=WAIT, stdin=subprocess.DEVNULL, capture_output=True)
    os.chmod(d / "munge" / "key", 0o600)
    sock = d / "munge" / "socket"
    node = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    conf.write_text(textwrap.dedent(f"""\
        ClusterName=zfarmtest
        SlurmctldHost={node}(127.0.0.1)
        SlurmctldPort={free_port()}
        SlurmdPort={free_port()}
        AuthType=auth/munge
        AuthInfo=socket={sock}
        CredType=cred/munge
        SlurmUser=root
        SlurmdUser=root
        StateSaveLocation={d / "state"}
        SlurmdSpoolDir={d / "spool"}
        SlurmctldPidFile={d / "slurmctld.pid"}
        SlurmdPidFile={d / "slurmd.pid"}
        ProctrackType=proctrack/pgid
        TaskPlugin=task/none
        JobAcctGatherType=jobacct_gather/none
        AccountingStorageType=accounting_storage/none
        SchedulerType=sched/builtin
        SelectType=select/cons_tres
        SelectTypeParameters=CR_Core
        ReturnToService=2
        MpiDefault=none
        NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} State=UNKNOWN
        PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
        """))
    env = dict(os.environ, SLURM_CONF=str(conf))
    daemons = []

    def start(args, log):
        p = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=open(d / log, "wb"), preexec_fn=_die_with_parent)
        daemons.append(p)
        return p

    try:
        start([sbin("munged"), "-F", "-f", "-S", str(sock), f"--key-file={d / 'munge' / 'key'}",
               f"--log-file={d / 'munged.log'}", f"--pid-file={d / 'munged.pid'}",
               f"--seed-file={d / 'munge' / 'seed'}"], "munged.err")
        wait_until(lambda: sock.exists(), interval=0.1, what="munged's socket")
        start([sbin("slurmctld"), "-D", "-c", "-i"], "slurmctld.log")
        start([sys.executable, "-c", REAPER, str(os.getpid()), sbin("slurmd"), "-D"], "slurmd.log")

        def idle():
            for p in daemons:
                assert p.poll() is None, (d / "slurmctld.log").read_text() + (d / "slurmd.log").read_text()
            r = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True,
                               timeout=WAIT, stdin=subprocess.DEVNULL)
            return r.returncode == 0 and r.stdout.strip() == "idle"

        wait_until(idle, interval=0.1, what="the Slurm node idle")
        yield {"env": env, "dir": d}
    finally:
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True, timeout=WAIT,
                       stdin=subprocess.DEVNULL)
        for i, p in reversed(list(enumerate(daemons))):  # slurmd and slurmctld first, munged last
            if i > 0 and p.poll() is None:  # scontrol shutdown stops these two, not munged
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            end_process(p)


def test_slurm_launcher_on_a_real_slurm(env, slurm, stop_at_end):
    env["env"]["SLURM_CONF"] = slurm["env"]["SLURM_CONF"]

    def squeue():
        r = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=env["env"], capture_output=True, text=True,
                           timeout=WAIT, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    ok(zfarm_cmd(env, "cluster", "start", "-n", "2", "--engines", "slurm", "--profile", "s", "--ip", "127.0.0.1",
                 "--slurm-option=--time=00:10:00", "--heartbeat-ms", HEARTBEAT))
    job = _profiles.read_state("s")["job_id"]
    assert job.isdigit() and squeue() == [job, "RUNNING"]
    with zfarm.Client(profile="s") as rc:
        # Each engine is a task of that job, started by Slurm's srun.
        seen = rc[:].apply_sync(lambda: (os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID"),
                                         __import__("zfarm").mpi.rank(), os.getpid()))
        assert sorted(r for _, _, r, _ in seen) == [0, 1]
        assert all(j == job and step is not None for j, step, _, _ in seen)
        assert rc.load_balanced_view().map_sync(abs, range(-30, 0)) == list(range(30, 0, -1))
        status = rc.queue_status()
    assert sorted(engine_pids(status)) == sorted(p for _, _, _, p in seen)
    ok(zfarm_cmd(env, "cluster", "stop", "--profile", "s"))
    # scancel ended the job, and with it the engines.
    wait_until(lambda: squeue() == [], interval=0.1, what="the job gone from the queue after stop")
    assert gone(engine_pids(status))
