"""Ways to start engines for a cluster: local processes, MPI, ssh, Slurm.

Every launcher starts engines that read an *engine connection file* (the
engine endpoint and, with CURVE, the engine's keys) and register with the
broker over tcp.  ``start`` returns what ``stop`` needs later; both are
called by :func:`zfarm._profiles.start_cluster` and ``stop_cluster``.

>>> LocalLauncher().engine_command("/run/zfarm/p.engine.json", [])     # doctest: +SKIP
['/venv/bin/zfarm-engine', '--connection-file', '/run/zfarm/p.engine.json']
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from string import Template
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._cluster import find_binary
from ._errors import ZfarmError
from ._profiles import spawn_detached

# How long one ssh, sbatch or scancel call may take.
COMMAND_TIMEOUT = 60.0


class Launcher:
    """Starts ``n`` engines; subclasses say where."""

    name = "?"

    def __init__(self, engine: Optional[str] = None):
        # The zfarm-engine to run; by default the one installed beside this
        # package (the same path is assumed on other hosts: a shared install).
        self.engine = engine

    def engine_command(self, engine_file: str, engine_args: Sequence[str]) -> List[str]:
        engine = self.engine or find_binary("zfarm-engine")
        return [engine, "--connection-file", engine_file, *engine_args]

    def start(self, n: int, engine_file: str, engine_args: Sequence[str], log_path: str) -> Dict[str, Any]:
        raise NotImplementedError

    def stop(self, state: Dict[str, Any], grace: float) -> None:
        """Ends what the broker's Shutdown did not (called after it)."""


class LocalLauncher(Launcher):
    """Engines as detached processes on this machine."""

    name = "local"

    def start(self, n, engine_file, engine_args, log_path):
        cmd = self.engine_command(engine_file, engine_args)
        return {"engines": [spawn_detached(cmd, log_path) for _ in range(n)]}


def _mpi_flavour(mpiexec: str) -> str:
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = out.stdout + out.stderr
    if "Open MPI" in text or "OpenRTE" in text:
        return "openmpi"
    if "HYDRA" in text or "MPICH" in text:
        return "mpich"
    return "unknown"


class MPILauncher(Launcher):
    """Engines as the ranks of one ``mpiexec`` job.

    Inside a task, :mod:`zfarm.mpi` gives the rank and (importing mpi4py on
    first use) the world communicator, so engines can talk MPI to each other.
    """

    name = "mpi"

    def __init__(self, mpiexec: str = "mpiexec", mpi_args: Sequence[str] = (), engine: Optional[str] = None):
        super().__init__(engine)
        self.mpiexec = mpiexec
        self.mpi_args = list(mpi_args)

    def command(self, n: int, engine_file: str, engine_args: Sequence[str]) -> List[str]:
        exe = shutil.which(self.mpiexec)
        if exe is None:
            raise ZfarmError(f"{self.mpiexec} not found: install an MPI (e.g. apt-get install openmpi-bin)")
        cmd = [exe, "-n", str(n)]
        if _mpi_flavour(exe) == "openmpi":
            # More engines than cores is normal for a task farm; and
            # containers often run as root.
            cmd.append("--oversubscribe")
            if os.geteuid() == 0:
                cmd.append("--allow-run-as-root")
        return cmd + self.mpi_args + self.engine_command(engine_file, engine_args)

    def start(self, n, engine_file, engine_args, log_path):
        job = spawn_detached(self.command(n, engine_file, engine_args), log_path)
        return {"mpiexec": job, "engines": [job]}


def read_hosts_file(path: str) -> List[Tuple[str, int]]:
    """Lines "host [n]" ("#" starts a comment); n engines on host, default 1."""
    hosts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) > 2 or (len(words) == 2 and not words[1].isdigit()):
                raise ZfarmError(f"{path}:{lineno}: expected 'host [n]', got {line.strip()!r}")
            hosts.append((words[0], int(words[1]) if len(words) == 2 else 1))
    if not hosts:
        raise ZfarmError(f"{path} lists no hosts")
    return hosts


class SSHLauncher(Launcher):
    """Engines started over ssh on the hosts of a hosts file.

    The engine connection file is sent over ssh's stdin to
    ``~/.zfarm/<profile>.engine.json`` (mode 0600) on each host, so no shared
    filesystem is needed (and a shared home is replaced atomically, never
    seen half-written); the engines run detached under nohup.
    """

    name = "ssh"

    def __init__(self, hosts: Sequence[Tuple[str, int]], ssh: str = "ssh", ssh_args: Sequence[str] = (),
                 engine: Optional[str] = None):
        super().__init__(engine)
        self.hosts = list(hosts)
        self.ssh = ssh
        self.ssh_args = list(ssh_args)

    @classmethod
    def from_file(cls, path: str, **kwargs: Any) -> "SSHLauncher":
        return cls(read_hosts_file(path), **kwargs)

    def remote_script(self, n: int, engine_file: str, engine_args: Sequence[str]) -> str:
        """The shell script run on a host: store the file from stdin, start n engines, print pids."""
        name = os.path.basename(engine_file)
        engine = shlex.quote(self.engine or find_binary("zfarm-engine"))
        cmd = " ".join([engine, "--connection-file", '"$f"', *(shlex.quote(a) for a in engine_args)])
        return ("set -e; umask 077; d=\"$HOME/.zfarm\"; mkdir -p \"$d\"; "
                f"f=\"$d/{name}\"; cat > \"$f.$$\"; mv -f \"$f.$$\" \"$f\"; "
                f"i=0; while [ $i -lt {int(n)} ]; do i=$((i+1)); "
                f"nohup {cmd} >>\"$d/{name}.log\" 2>&1 </dev/null & echo $!; done")

    def command(self, host: str, n: int, engine_file: str, engine_args: Sequence[str]) -> List[str]:
        return [self.ssh, *self.ssh_args, host, "sh -c " + shlex.quote(self.remote_script(n, engine_file, engine_args))]

    def plan(self, n: int) -> Dict[str, int]:
        """host -> engines: hosts-file order, as many per host as its line
        says, then round again from the top while n is not reached."""
        plan: Dict[str, int] = {}
        order = [h for h, k in self.hosts for _ in range(k)]
        if not order:
            raise ZfarmError("the hosts file offers no engine slots")
        for i in range(n):
            host = order[i % len(order)]
            plan[host] = plan.get(host, 0) + 1
        return plan

    def start(self, n, engine_file, engine_args, log_path):
        plan = self.plan(n)
        remote = []
        with open(engine_file, "rb") as f:
            body = f.read()
        started = {"remote": remote, "ssh": [self.ssh, *self.ssh_args]}
        try:
            for host, k in plan.items():
                out = subprocess.run(self.command(host, k, engine_file, engine_args), input=body,
                                     capture_output=True, timeout=COMMAND_TIMEOUT)
                if out.returncode != 0:
                    err = out.stderr.decode(errors="replace").strip()
                    raise ZfarmError(f"ssh {host} failed with exit code {out.returncode}: {err}")
                pids = [int(w) for w in out.stdout.split() if w.isdigit()]
                remote.append({"host": host, "pids": pids})
        except BaseException:
            self.stop(started, 0)  # the engines already started on earlier hosts
            raise
        return started

    def stop(self, state, grace):
        ssh = state.get("ssh") or [self.ssh]
        for r in state.get("remote", []):
            pids = " ".join(str(int(p)) for p in r["pids"])
            # Only processes that still are zfarm engines get a signal.
            script = (f"for p in {pids}; do grep -q zfarm-engine /proc/$p/cmdline 2>/dev/null && "
                      "kill $p 2>/dev/null; done; true")
            try:
                subprocess.run([*ssh, r["host"], "sh -c " + shlex.quote(script)], capture_output=True,
                               timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                pass


# The batch script; $-names are filled in by SlurmLauncher.script().
SLURM_TEMPLATE = """#!/bin/sh
#SBATCH --job-name=${job_name}
#SBATCH --ntasks=${n}
#SBATCH --output=${output}
${directives}
# zfarm engines: one per Slurm task, all registering with the broker at
# ${endpoint}
srun --ntasks=${n} --kill-on-bad-exit=0 ${engine_command}
"""


class SlurmLauncher(Launcher):
    """Engines as the tasks of one Slurm job (``sbatch`` of a generated script).

    The engine connection file must be readable on the compute nodes: keep
    the profile directory on a shared filesystem (ZFARM_PROFILE_DIR).
    """

    name = "slurm"

    def __init__(self, sbatch: str = "sbatch", scancel: str = "scancel", options: Sequence[str] = (),
                 template: str = SLURM_TEMPLATE, engine: Optional[str] = None):
        super().__init__(engine)
        self.sbatch = sbatch
        self.scancel = scancel
        self.options = list(options)  # extra "#SBATCH" options, e.g. "--time=01:00:00"
        self.template = template

    def script(self, n: int, engine_file: str, engine_args: Sequence[str], log_path: str) -> str:
        import json

        with open(engine_file, encoding="utf-8") as f:
            endpoint = json.load(f).get("engine", "?")
        profile = os.path.basename(engine_file).split(".engine.json")[0]
        # safe_substitute: a template may use shell variables ($SLURM_JOB_ID).
        return Template(self.template).safe_substitute(
            job_name=f"zfarm-{profile}",
            n=int(n),
            output=log_path,
            directives="\n".join(f"#SBATCH {o}" for o in self.options),
            endpoint=endpoint,
            engine_command=" ".join(shlex.quote(a) for a in self.engine_command(engine_file, engine_args)),
        )

    def start(self, n, engine_file, engine_args, log_path):
        path = engine_file.replace(".engine.json", ".sbatch")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.script(n, engine_file, engine_args, log_path))
        exe = shutil.which(self.sbatch)
        if exe is None:
            raise ZfarmError(f"{self.sbatch} not found: is this a Slurm login node?")
        out = subprocess.run([exe, "--parsable", path], capture_output=True, text=True,
                             timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise ZfarmError(f"sbatch failed ({out.returncode}): {out.stderr.strip()}")
        job_id = out.stdout.strip().split(";")[0]
        return {"job_id": job_id, "script": path, "scancel": self.scancel}

    def stop(self, state, grace):
        job = state.get("job_id")
        exe = shutil.which(state.get("scancel") or self.scancel)
        if job and exe:
            try:
                subprocess.run([exe, str(job)], capture_output=True, timeout=COMMAND_TIMEOUT,
                               stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                pass


def launcher_for_state(state: Dict[str, Any]) -> Launcher:
    """A launcher able to stop what ``state`` describes."""
    name = state.get("launcher")
    if name == "ssh":
        return SSHLauncher([])
    if name == "slurm":
        return SlurmLauncher()
    if name == "mpi":
        return MPILauncher()
    return LocalLauncher()


def make_launcher(name: str, *, hosts_file: Optional[str] = None, **kwargs: Any) -> Launcher:
    """The launcher called ``name`` ("local", "mpi", "ssh", "slurm")."""
    if name == "local":
        return LocalLauncher(**kwargs)
    if name == "mpi":
        return MPILauncher(**kwargs)
    if name == "ssh":
        if not hosts_file:
            raise ZfarmError("--engines ssh needs --hosts FILE (lines 'host [n]')")
        return SSHLauncher.from_file(hosts_file, **kwargs)
    if name == "slurm":
        return SlurmLauncher(**kwargs)
    raise ZfarmError(f"unknown launcher {name!r}; choose local, mpi, ssh or slurm")
