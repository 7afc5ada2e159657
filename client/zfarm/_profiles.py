"""Named clusters that outlive the command that started them.

A *profile* is a name for one cluster of the current user.  Its files live
in the profile directory ($ZFARM_PROFILE_DIR, else $XDG_RUNTIME_DIR/zfarm,
else ~/.zfarm; mode 0700):

==========================  ==================================================
``<name>.json``             the connection file the broker writes (mode 0600)
``<name>.engine.json``      what engines read: engine endpoint (+ engine keys)
``<name>.state.json``       pids, launcher and start options (mode 0600)
``<name>.broker.log``       the broker's stderr
``<name>.engines.log``      the engines' (or launcher's) output
==========================  ==================================================

>>> info = start_cluster("demo", 2)        # doctest: +SKIP
>>> stop_cluster("demo")                   # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence

from ._cluster import BROKER_START_TIMEOUT, find_binary
from ._errors import ZfarmError

DEFAULT_PROFILE = "default"
# How long `stop` waits for processes to leave after the broker's Shutdown,
# and again after SIGTERM, before SIGKILL.
STOP_GRACE = 10.0
# Characters allowed in a profile name: it becomes part of file names.
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def profile_dir(create: bool = True) -> str:
    """The per-user directory holding connection and state files (mode 0700)."""
    path = os.environ.get("ZFARM_PROFILE_DIR")
    if not path:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        path = os.path.join(runtime, "zfarm") if runtime else os.path.join(os.path.expanduser("~"), ".zfarm")
    if create:
        os.makedirs(path, mode=0o700, exist_ok=True)
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o700)  # others must not read keys or endpoints
    return path


def _check_name(profile: str) -> str:
    if not profile or not set(profile) <= _NAME_OK or profile.startswith("."):
        raise ZfarmError(f"bad profile name {profile!r}: use letters, digits, '-', '_' and '.'")
    return profile


def profile_path(profile: str, suffix: str = ".json") -> str:
    """``<profile dir>/<profile><suffix>``; suffix ".json" is the connection file."""
    return os.path.join(profile_dir(), _check_name(profile) + suffix)


def connection_file(profile: str = DEFAULT_PROFILE) -> str:
    """The connection file of a running profile; ZfarmError if there is none."""
    path = profile_path(profile)
    if not os.path.exists(path):
        raise ZfarmError(f"no cluster is running for profile {profile!r} (no {path}); "
                         f"start one with: zfarm cluster start --profile {profile}")
    return path


def write_private_json(path: str, data: Dict[str, Any]) -> None:
    """Writes JSON atomically with mode 0600."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)


def read_state(profile: str) -> Optional[Dict[str, Any]]:
    path = profile_path(profile, ".state.json")
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ZfarmError(f"{path} is damaged ({exc}); remove it by hand") from None
    if not isinstance(state, dict):
        raise ZfarmError(f"{path} is damaged (not a JSON object); remove it by hand")
    return state


def list_profiles() -> List[str]:
    """Names of the profiles that have a state file."""
    d = profile_dir()
    return sorted(n[: -len(".state.json")] for n in os.listdir(d) if n.endswith(".state.json"))


# -- processes -------------------------------------------------------------------

def start_time(pid: int) -> Optional[int]:
    """The kernel's start time of ``pid`` (clock ticks), None if it is gone.

    Stored beside every pid so a later `stop` never signals a process that
    merely reuses the number.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None  # exited, not yet reaped by its parent
    return int(fields[19])


def same_process(pid: int, started: Optional[int]) -> bool:
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def _reap_if_child(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_gone(procs: Sequence[Dict[str, Any]], timeout: float) -> List[Dict[str, Any]]:
    """Waits until every {"pid", "start"} has exited; returns those still running."""
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            _reap_if_child(p["pid"])
        alive = [p for p in procs if same_process(p["pid"], p.get("start"))]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def signal_all(procs: Sequence[Dict[str, Any]], sig: int) -> None:
    for p in procs:
        if same_process(p["pid"], p.get("start")):
            try:
                os.kill(p["pid"], sig)
            except ProcessLookupError:
                pass


def end_processes(procs: Sequence[Dict[str, Any]], grace: float) -> List[Dict[str, Any]]:
    """SIGTERM, then SIGKILL after ``grace``; returns those that survived both."""
    alive = wait_gone(procs, 0)
    if alive:
        signal_all(alive, signal.SIGTERM)
        alive = wait_gone(alive, grace)
    if alive:
        signal_all(alive, signal.SIGKILL)
        alive = wait_gone(alive, grace)
    return alive


def spawn_detached(args: Sequence[str], log_path: str, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Starts a process in its own session (it outlives the caller); output to log_path."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        p = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                             start_new_session=True, close_fds=True, env=env)
    finally:
        os.close(fd)
    # The caller forgets the Popen: mark it done so its destructor does not warn.
    p.returncode = 0
    return {"pid": p.pid, "start": start_time(p.pid), "args": list(args)}


# -- endpoints -----------------------------------------------------------------------

def _rewrite_host(endpoint: str, host: str) -> str:
    """tcp://0.0.0.0:5555 -> tcp://<host>:5555 (for peers on other machines)."""
    if not endpoint.startswith("tcp://"):
        return endpoint
    port = endpoint.rsplit(":", 1)[1]
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def engine_connection_info(info: Dict[str, Any], location: Optional[str]) -> Dict[str, Any]:
    """What an engine needs from the broker's connection file.

    The engine endpoint is rewritten to ``location`` when the broker bound a
    wildcard address; of the CURVE keys only the server's public key and the
    engine's pair are kept (engines never see the client's secret key).
    """
    engine = info["engine"]
    host = engine[len("tcp://"):].rsplit(":", 1)[0] if engine.startswith("tcp://") else ""
    if host in ("0.0.0.0", "*", "[::]", "::"):
        engine = _rewrite_host(engine, location or socket.gethostname())
    out: Dict[str, Any] = {"version": info.get("version", 1), "engine": engine}
    curve = info.get("curve")
    if curve:
        out["curve"] = {k: curve[k] for k in ("server_public", "engine_public", "engine_secret") if k in curve}
    return out


def is_loopback_ip(ip: str) -> bool:
    return ip == "localhost" or ip.startswith("127.") or ip in ("::1", "[::1]")


# -- start, stop, status ---------------------------------------------------------------

def running_state(profile: str) -> Optional[Dict[str, Any]]:
    """The state of a profile whose broker is still running, else None."""
    state = read_state(profile)
    if state is None:
        return None
    b = state.get("broker") or {}
    if b.get("pid") and same_process(b["pid"], b.get("start")):
        return state
    return None


def start_cluster(profile: str, n: int, launcher: Any = None, *, ip: str = "127.0.0.1",
                  location: Optional[str] = None, heartbeat_ms: Optional[int] = None,
                  broker_args: Sequence[str] = (), engine_args: Sequence[str] = (),
                  allow_insecure: bool = False, wait: bool = True, timeout: float = 60.0) -> Dict[str, Any]:
    """Starts a broker (detached) and ``n`` engines through ``launcher``.

    Returns the state written to ``<profile>.state.json``.  With ``wait`` it
    returns once ``n`` engines have registered (TimeoutError after ``timeout``).
    """
    from ._launchers import LocalLauncher

    launcher = launcher if launcher is not None else LocalLauncher()
    if running_state(profile) is not None:
        raise ZfarmError(f"a cluster is already running for profile {profile!r}; "
                         f"stop it first with: zfarm cluster stop --profile {profile}")
    if read_state(profile) is not None:
        # A cluster whose broker died: end its engines before reusing the name.
        stop_cluster(profile)
    conn = profile_path(profile)
    args = [find_binary("zfarm-broker"), "--connection-file", conn,
            "--client-endpoint", "tcp://127.0.0.1:*", "--engine-endpoint", f"tcp://{ip}:*"]
    if heartbeat_ms:
        args += ["--heartbeat-ms", str(heartbeat_ms)]
    if allow_insecure:
        args.append("--allow-insecure")
    elif not is_loopback_ip(ip):
        # Other machines can reach the engine port: only the cluster's keys get in.
        args.append("--curve")
    args += list(broker_args)
    broker = spawn_detached(args, profile_path(profile, ".broker.log"))
    state: Dict[str, Any] = {"version": 1, "profile": profile, "n": n, "launcher": launcher.name,
                             "broker": broker, "engines": [], "started": time.time()}
    write_private_json(profile_path(profile, ".state.json"), state)
    deadline = time.monotonic() + BROKER_START_TIMEOUT
    while not os.path.exists(conn):
        if not same_process(broker["pid"], broker["start"]):
            _reap_if_child(broker["pid"])
            cleanup_files(profile)
            raise ZfarmError(f"zfarm-broker exited on start; see {profile_path(profile, '.broker.log')}")
        if time.monotonic() > deadline:
            end_processes([broker], STOP_GRACE)
            cleanup_files(profile)
            raise ZfarmError("zfarm-broker did not write its connection file in time")
        time.sleep(0.02)
    with open(conn, encoding="utf-8") as f:
        info = json.load(f)
    engine_file = profile_path(profile, ".engine.json")
    write_private_json(engine_file, engine_connection_info(info, location))
    eargs = list(engine_args)
    if heartbeat_ms:
        eargs = ["--heartbeat-ms", str(heartbeat_ms)] + eargs
    try:
        state.update(launcher.start(n, engine_file, eargs, profile_path(profile, ".engines.log")))
    except BaseException:
        stop_cluster(profile)
        raise
    write_private_json(profile_path(profile, ".state.json"), state)
    if wait:
        try:
            _wait_for_engines(profile, conn, n, state, timeout)
        except BaseException:
            stop_cluster(profile)
            raise
    return state


def _wait_for_engines(profile: str, conn: str, n: int, state: Dict[str, Any], timeout: float) -> None:
    """Until n engines registered; fails early if every local engine process
    (or the mpiexec) has already exited."""
    from ._client import Client
    from ._errors import TimeoutError

    local = list(state.get("engines") or [])
    deadline = time.monotonic() + timeout
    with Client(conn) as rc:
        while True:
            have = len(rc.ids)
            if have >= n:
                return
            if local and not wait_gone(local, 0):
                raise ZfarmError(f"the engines exited before {n} registered ({have} did); "
                                 f"see {profile_path(profile, '.engines.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{have} of {n} engines registered after {timeout} s; "
                                   f"see {profile_path(profile, '.engines.log')}")
            time.sleep(0.05)


def cleanup_files(profile: str) -> None:
    for suffix in (".json", ".engine.json", ".state.json"):
        try:
            os.unlink(profile_path(profile, suffix))
        except FileNotFoundError:
            pass


def stop_cluster(profile: str, grace: float = STOP_GRACE) -> Dict[str, Any]:
    """Stops a profile's cluster: Shutdown through the broker, then signals.

    Returns a summary {"stopped": bool, "killed": [pids needing SIGTERM/SIGKILL]}.
    """
    from ._launchers import launcher_for_state

    state = read_state(profile)
    if state is None:
        raise ZfarmError(f"no cluster is known for profile {profile!r}")
    broker = state.get("broker") or {}
    local = [p for p in [broker] + list(state.get("engines", [])) if p.get("pid")]
    conn = profile_path(profile)
    if os.path.exists(conn) and same_process(broker.get("pid", 0), broker.get("start")):
        _send_shutdown(conn, broker, grace)
        alive = wait_gone(local, grace)
    else:
        # No broker to pass Shutdown on: nothing will make the engines leave
        # by themselves, so waiting the grace period first would only delay.
        alive = wait_gone(local, 0)
    launcher = launcher_for_state(state)
    launcher.stop(state, grace)  # remote engines, batch jobs
    leftover = end_processes(wait_gone(local, 0), grace)
    killed = [p["pid"] for p in alive]
    cleanup_files(profile)
    if leftover:
        raise ZfarmError(f"processes {[p['pid'] for p in leftover]} survived SIGKILL")
    return {"stopped": True, "killed": killed}


def _send_shutdown(conn: str, broker: Dict[str, Any], grace: float) -> None:
    from ._client import Client

    try:
        rc = Client(conn)
    except Exception:  # noqa: BLE001 - unreadable file: the signals below still work
        return
    try:
        rc._core.send(9, 0, [], 0, "", [])  # Shutdown; the broker passes it to every engine
        # Keep the connection open until the broker has left, so the message
        # is not lost in a closing socket.
        wait_gone([broker], grace)
    finally:
        rc.close()


def cluster_status(profile: str, interval: float = 1.0, timeout: float = 10.0) -> Dict[str, Any]:
    """Two status samples ``interval`` apart; adds ``throughput`` (results/s)."""
    from ._client import Client

    state = read_state(profile)
    conn = connection_file(profile)
    if state is not None and running_state(profile) is None:
        raise ZfarmError(f"the broker of profile {profile!r} is not running any more; "
                         f"clean up with: zfarm cluster stop --profile {profile}")
    with Client(conn) as rc:
        first = rc.queue_status(timeout=timeout)
        t0 = time.monotonic()
        if interval > 0:
            time.sleep(interval)  # the measuring window, not a synchronisation
        second = rc.queue_status(timeout=timeout)
        dt = time.monotonic() - t0
    second["throughput"] = (second.get("done", 0) - first.get("done", 0)) / dt if dt > 0 else 0.0
    state = state or {}
    second["profile"] = profile
    second["launcher"] = state.get("launcher")
    second["connection_file"] = profile_path(profile)
    return second
