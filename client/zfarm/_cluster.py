"""Starting and stopping a local cluster: one broker and N engines.

>>> with zfarm.Cluster(n=2) as rc:            # doctest: +SKIP
...     rc[:].apply_sync(os.getpid)
[5120, 5121]
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import weakref
from typing import List, Optional, Sequence, Tuple

from . import _shm
from ._errors import ZfarmError

# How long a starting broker may take to write its connection file.
BROKER_START_TIMEOUT = 20.0
# How long stop() waits for processes to leave after SIGTERM before SIGKILL.
STOP_GRACE = 5.0

_PR_SET_PDEATHSIG = 1


def find_binary(name: str) -> str:
    """Locates ``zfarm-broker`` or ``zfarm-engine``.

    Looks in $ZFARM_BIN_DIR, then the scripts directory of this Python
    environment (where ``pip install`` put them), then beside the Python
    executable, then on $PATH.
    """
    candidates = []
    if os.environ.get("ZFARM_BIN_DIR"):
        candidates.append(os.environ["ZFARM_BIN_DIR"])
    candidates.append(sysconfig.get_path("scripts"))
    candidates.append(os.path.dirname(sys.executable))
    for folder in candidates:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found:
        return found
    raise ZfarmError(f"cannot find {name}: is zfarm installed (pip install .) in this environment?")


# sun_path holds 108 bytes with its terminating NUL.
_MAX_IPC_PATH = 107


def local_endpoints(workdir: Optional[str]) -> List[str]:
    """Broker arguments for a cluster of this host: Unix-domain sockets in
    ``workdir`` (private to this user), or loopback TCP if their paths would
    not fit in a socket address.

    Measured with ``tools/bench/cpu_per_task.py`` (20,000 async no-op tasks,
    five alternating pairs of runs, load 2-8): the client, broker and engines
    together spent 221 us of CPU per task over ipc against 243 us over TCP.
    """
    if workdir:
        paths = [os.path.join(workdir, name) for name in ("client.sock", "engine.sock")]
        if all(len(p.encode()) <= _MAX_IPC_PATH for p in paths):
            return ["--client-endpoint", "ipc://" + paths[0], "--engine-endpoint", "ipc://" + paths[1]]
    return ["--client-endpoint", "tcp://127.0.0.1:*", "--engine-endpoint", "tcp://127.0.0.1:*"]


def _before_exec(cpu: Optional[int]) -> None:
    # Runs in the child before exec: if the Python process that started the
    # cluster dies (even by SIGKILL), the kernel sends SIGTERM to the child,
    # so no broker or engine is left behind.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort on non-Linux systems
        pass
    # The child has one thread here; every thread it starts later (libzmq's
    # I/O thread, the engine's watcher) inherits the CPU.
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:  # the CPU left this process's set meanwhile: run unpinned
            pass


def usable_cpus() -> List[int]:
    """The CPUs this process may run on (its affinity mask: a Slurm job's or
    a container's share of the machine, not every core), in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return []


def placement(n: int, pin, cpus: Sequence[int]) -> Optional[Tuple[int, List[int]]]:
    """Where a cluster of ``n`` engines runs: the broker's CPU and each
    engine's, or None to leave every process to the kernel.

    ``pin="auto"`` pins when there is one engine per usable CPU (the
    default ``n``), ``True`` whenever there are two CPUs or more (engines
    round-robin), ``False`` never.  The broker shares the last CPU.
    """
    if pin not in ("auto", True, False):
        raise ValueError(f"pin must be 'auto', True or False, not {pin!r}")
    if not pin or len(cpus) < 2 or (pin == "auto" and n != len(cpus)):
        return None
    return cpus[-1], [cpus[i % len(cpus)] for i in range(n)]


def _reap(procs: Sequence[subprocess.Popen], grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                p.terminate()
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


class Cluster:
    """A local cluster of one ``zfarm-broker`` and ``n`` ``zfarm-engine``.

    ``n`` defaults to the number of cores.  Used as a context manager it
    starts the cluster and yields a connected :class:`Client`; leaving the
    block stops every process it started.

    The broker listens on two Unix-domain sockets (``ipc://``) in a new
    private directory (mode 0700), so only this user on this machine can
    connect, and a message costs less CPU than through loopback TCP.  Where
    that directory's path is too long for a socket address it listens on
    127.0.0.1 instead.  ``curve=True`` also turns on CurveZMQ: traffic is
    encrypted and only holders of the keys in the connection file (mode
    0600) get in.

    ``prefetch`` is how many tasks an engine holds at once (default 2);
    while its tasks run short it asks for more, up to ``prefetch_max``
    (default 16; equal to ``prefetch``: a fixed credit), and gives them
    back when one runs long (docs/architecture.rst, "Engine credit").

    ``pin`` binds each process to one CPU, as MPI launchers bind ranks to
    cores: the broker to the last usable CPU, engine ``i`` to the
    ``i``-th.  A process and its libzmq I/O thread then wake each other
    on one CPU instead of across two, which makes a round trip about a
    third shorter (docs/benchmarks.rst).  ``"auto"`` (the default) pins
    when there is one engine per usable CPU, as with the default ``n``;
    ``True`` always (engines round-robin); ``False`` never.  A pinned
    engine runs its task's threads on its one CPU too (a BLAS library
    sees one CPU); use ``pin=False`` for engines that should spread
    their own threads.  The client's process is never pinned.
    """

    def __init__(self, n: Optional[int] = None, *, heartbeat_ms: Optional[int] = None,
                 prefetch: Optional[int] = None, prefetch_max: Optional[int] = None,
                 engine_args: Sequence[str] = (),
                 broker_args: Sequence[str] = (), quiet: bool = True, curve: bool = False,
                 pin="auto"):
        cpus = usable_cpus()
        self.n = n if n is not None else (len(cpus) or os.cpu_count() or 1)
        self.pin = pin
        # (broker CPU, engine CPUs) or None; decided once, for the n asked.
        self._placement = placement(self.n, pin, cpus)
        self._cpus = cpus
        self.heartbeat_ms = heartbeat_ms
        self.prefetch = prefetch
        self.prefetch_max = prefetch_max
        self.engine_args = list(engine_args)
        self.broker_args = list(broker_args)
        self.quiet = quiet
        self.curve = curve
        self.workdir: Optional[str] = None
        self.connection_file: Optional[str] = None
        self.broker: Optional[subprocess.Popen] = None
        self.engines: List[subprocess.Popen] = []
        # Every process ever started (restarted brokers, replaced engines),
        # so stop() reaps them all.
        self._started: List[subprocess.Popen] = []
        self._client = None
        self._finalizer: Optional[weakref.finalize] = None

    # -- life cycle -----------------------------------------------------------
    def start(self) -> "Cluster":
        """Starts the broker, waits for its connection file, starts engines."""
        if self.broker is not None:
            return self
        _shm.remove_stale()  # shared-memory files of processes that died
        self.workdir = tempfile.mkdtemp(prefix="zfarm-")
        self.connection_file = os.path.join(self.workdir, "connection.json")
        self._finalizer = weakref.finalize(self, _cleanup, self._started, self.workdir)
        self._start_broker(self._broker_args())
        self.add_engines(self.n)
        return self

    def _broker_args(self, endpoints: bool = True) -> List[str]:
        args = [find_binary("zfarm-broker"), "--connection-file", self.connection_file]
        if self.heartbeat_ms:
            args += ["--heartbeat-ms", str(self.heartbeat_ms)]
        if self.curve:
            args += ["--curve"]
        chosen = any(a.split("=", 1)[0] in ("--client-endpoint", "--engine-endpoint") for a in self.broker_args)
        if endpoints and not chosen:
            args += local_endpoints(self.workdir)
        return args + self.broker_args

    def _start_broker(self, args: List[str]) -> None:
        # The broker writes the file (atomically) once it listens; a restarted
        # broker rewrites it with its own pid.
        self.broker = self._spawn(args, self._placement[0] if self._placement else None)
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        while _file_pid(self.connection_file) != self.broker.pid:
            if self.broker.poll() is not None:
                self.stop()
                raise ZfarmError(f"zfarm-broker exited with code {self.broker.returncode} on start")
            if time.monotonic() > deadline:
                self.stop()
                raise ZfarmError("zfarm-broker did not write its connection file in time")
            time.sleep(0.01)

    def restart_broker(self) -> None:
        """Kills the broker (SIGKILL, as in a crash) and starts a new one on
        the same endpoints (and keys); engines and clients reconnect by
        themselves.  The new broker knows nothing of earlier tasks: clients
        end them with TaskLost."""
        if self.broker is None or self.connection_file is None:
            raise ZfarmError("the cluster is not running")
        self.broker.kill()
        self.broker.wait(STOP_GRACE)
        # The same endpoints as before: from the file (--reuse), or named.
        args = self._broker_args(endpoints=False)
        if _supports_reuse(args[0]):
            args.append("--reuse")
        else:
            info = read_connection_file(self.connection_file)
            args += ["--client-endpoint", info["client"], "--engine-endpoint", info["engine"]]
        self._start_broker(args)

    def add_engines(self, n: int) -> None:
        """Starts ``n`` more engines on this machine."""
        args = [find_binary("zfarm-engine"), "--connection-file", self.connection_file]
        if self.prefetch:
            args += ["--prefetch", str(self.prefetch)]
        if self.prefetch_max:
            args += ["--prefetch-max", str(self.prefetch_max)]
        if self.heartbeat_ms:
            args += ["--heartbeat-ms", str(self.heartbeat_ms)]
        args += self.engine_args
        for _ in range(n):
            self.engines.append(self._spawn(args, self._engine_cpu(len(self.engines))))

    def _engine_cpu(self, i: int) -> Optional[int]:
        # Engines added beyond the first n: pinned round-robin only when
        # asked for (pin=True); "auto" leaves them to the kernel.
        if self._placement is None:
            return None
        if i < len(self._placement[1]):
            return self._placement[1][i]
        return self._cpus[i % len(self._cpus)] if self.pin is True else None

    def _spawn(self, args: List[str], cpu: Optional[int] = None) -> subprocess.Popen:
        out = subprocess.DEVNULL if self.quiet else None
        # Engines of a local cluster share this host: large results through /dev/shm.
        env = dict(os.environ, **{_shm.ENV: "1" if _shm.enabled_by_env(True) else "0"})
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             preexec_fn=functools.partial(_before_exec, cpu), close_fds=True, env=env)
        self._started.append(p)
        return p

    def connect(self, timeout: float = 30.0):
        """A Client of this cluster, once all its engines have registered."""
        from ._client import Client

        if self.connection_file is None:
            self.start()
        client = Client(cluster=self)
        try:
            client.wait_for_engines(sum(p.poll() is None for p in self.engines), timeout=timeout)
        except BaseException:
            client.close()
            raise
        return client

    def stop(self) -> None:
        """Stops every process this cluster started and reaps them."""
        if self._finalizer is not None:
            self._finalizer()
        elif self._started:
            _cleanup(self._started, self.workdir)

    def processes(self) -> List[subprocess.Popen]:
        """Every process this cluster started (including replaced ones)."""
        return list(self._started)

    def __enter__(self):
        self.start()
        self._client = self.connect()
        return self._client

    def __exit__(self, *exc) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.stop()

    def __repr__(self) -> str:
        return f"<zfarm.Cluster n={self.n} connection_file={self.connection_file!r}>"

    @property
    def cpus(self) -> Optional[dict]:
        """Where the processes are pinned: ``{"broker": cpu, "engines":
        [cpu or None, ...]}``, or None when nothing is pinned."""
        if self._placement is None:
            return None
        return {"broker": self._placement[0], "engines": [self._engine_cpu(i) for i in range(len(self.engines))]}


def _cleanup(processes: List[subprocess.Popen], workdir: Optional[str]) -> None:
    # Engines first, so they do not race a stopping broker; the broker last.
    brokers = [p for p in processes if "zfarm-broker" in os.path.basename(str(p.args[0]))]
    _reap([p for p in processes if p not in brokers] + brokers, STOP_GRACE)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)


def _file_pid(path: Optional[str]) -> Optional[int]:
    try:
        with open(path, encoding="utf-8") as f:  # type: ignore[arg-type]
            return json.load(f).get("pid")
    except (OSError, ValueError, AttributeError):
        return None  # not written yet (or being replaced)


_reuse_support: dict = {}


def _supports_reuse(broker: str) -> bool:
    # Brokers that read endpoints (and keys) back from their connection file.
    if broker not in _reuse_support:
        try:
            out = subprocess.run([broker, "--help"], capture_output=True, text=True, timeout=10)
            _reuse_support[broker] = "--reuse" in out.stdout + out.stderr
        except (OSError, subprocess.SubprocessError):
            _reuse_support[broker] = False
    return _reuse_support[broker]


def read_connection_file(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    if "client" not in info:
        raise ZfarmError(f"{path} is not a zfarm connection file (no 'client' endpoint)")
    return info

