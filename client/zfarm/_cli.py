"""The ``zfarm`` command.

::

    zfarm cluster start -n 4 [--profile NAME] [--engines local|mpi|ssh|slurm]
    zfarm cluster status [--profile NAME] [--json]
    zfarm cluster stop [--profile NAME]
    zfarm cluster list
    zfarm engine [--profile NAME] [zfarm-engine options]   # one more engine, in the foreground
    zfarm demo [--engines N]

``python -m zfarm`` runs the same command.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import List, Optional

from ._errors import ZfarmError
from ._profiles import DEFAULT_PROFILE


def _add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=os.environ.get("ZFARM_PROFILE", DEFAULT_PROFILE),
                   help="name of the cluster (default: $ZFARM_PROFILE or 'default')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zfarm", description="Start, inspect and stop zfarm clusters.")
    sub = parser.add_subparsers(dest="command", required=True)

    cluster = sub.add_parser("cluster", help="start, stop or inspect a cluster")
    csub = cluster.add_subparsers(dest="action", required=True)

    start = csub.add_parser("start", help="start a broker and N engines in the background")
    _add_profile(start)
    start.add_argument("-n", type=int, default=None,
                       help="number of engines (default: the hosts file's total for ssh, else this machine's cores)")
    start.add_argument("--engines", choices=["local", "mpi", "ssh", "slurm"], default="local",
                       help="how engines are started (default: local processes)")
    start.add_argument("--ip", default=None,
                       help="address the broker's engine port binds (default 127.0.0.1 for local and mpi, "
                            "all interfaces for ssh and slurm)")
    start.add_argument("--location", default=None,
                       help="host name engines use to reach the broker (default: this host's name)")
    start.add_argument("--hosts", help="ssh: hosts file, lines 'host [n]'")
    start.add_argument("--ssh", default="ssh", help="ssh: the ssh command, with options (e.g. 'ssh -p 2222')")
    start.add_argument("--mpiexec", default="mpiexec", help="mpi: the mpiexec command")
    start.add_argument("--mpi-arg", action="append", default=[], help="mpi: extra mpiexec argument (repeatable)")
    start.add_argument("--sbatch", default="sbatch", help="slurm: the sbatch command")
    start.add_argument("--slurm-option", action="append", default=[],
                       help="slurm: extra '#SBATCH' option, e.g. --slurm-option=--time=1:00:00 (repeatable)")
    start.add_argument("--engine-cmd", default=None, help="zfarm-engine path to run (default: the installed one)")
    start.add_argument("--heartbeat-ms", type=int, default=None, help="heartbeat interval of broker and engines")
    start.add_argument("--broker-arg", action="append", default=[], help="extra zfarm-broker argument")
    start.add_argument("--engine-arg", action="append", default=[], help="extra zfarm-engine argument")
    start.add_argument("--allow-insecure", action="store_true",
                       help="bind a non-loopback address without CURVE (anyone reaching it can run code)")
    start.add_argument("--no-wait", action="store_true", help="return without waiting for engines to register")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the engines")

    stop = csub.add_parser("stop", help="shut the cluster down and reap its processes")
    _add_profile(stop)
    stop.add_argument("--grace", type=float, default=None,
                      help="seconds processes get to leave after Shutdown, and again after SIGTERM (default 10)")

    status = csub.add_parser("status", help="engines, queue depths, tasks done/failed, throughput")
    _add_profile(status)
    status.add_argument("--interval", type=float, default=1.0, help="seconds between the two samples")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    csub.add_parser("list", help="profiles with a cluster")

    engine = sub.add_parser("engine", help="run one engine in the foreground for a profile's cluster")
    _add_profile(engine)

    sub.add_parser("demo", help="run the demo job on a local cluster", add_help=False)
    return parser


def _start(args: argparse.Namespace) -> int:
    from ._launchers import make_launcher
    from ._profiles import profile_path, start_cluster

    kwargs = {"engine": args.engine_cmd}
    if args.engines == "mpi":
        kwargs.update(mpiexec=args.mpiexec, mpi_args=args.mpi_arg)
    elif args.engines == "ssh":
        ssh = shlex.split(args.ssh)
        kwargs.update(ssh=ssh[0], ssh_args=ssh[1:])
    elif args.engines == "slurm":
        kwargs.update(sbatch=args.sbatch, options=args.slurm_option)
    launcher = make_launcher(args.engines, hosts_file=args.hosts, **kwargs)
    if args.n is None:
        args.n = sum(k for _, k in launcher.hosts) if args.engines == "ssh" else (os.cpu_count() or 1)
    if args.n < 1:
        raise ZfarmError("-n must be at least 1")
    ip = args.ip or ("127.0.0.1" if args.engines in ("local", "mpi") else "*")
    wait = not args.no_wait
    print(f"zfarm: starting profile {args.profile!r}: broker and {args.n} {args.engines} engines", flush=True)
    state = start_cluster(args.profile, args.n, launcher, ip=ip, location=args.location,
                          heartbeat_ms=args.heartbeat_ms, broker_args=args.broker_arg,
                          engine_args=args.engine_arg, allow_insecure=args.allow_insecure, wait=wait,
                          timeout=args.timeout)
    if "job_id" in state:
        print(f"zfarm: Slurm job {state['job_id']} submitted ({state['script']})")
    print(f"zfarm: {'engines registered' if wait else 'started'}; connection file {profile_path(args.profile)}")
    print(f"zfarm: connect with zfarm.Client(profile={args.profile!r}); stop with "
          f"zfarm cluster stop --profile {args.profile}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from ._profiles import stop_cluster

    summary = stop_cluster(args.profile) if args.grace is None else stop_cluster(args.profile, args.grace)
    extra = f" (signalled {summary['killed']})" if summary["killed"] else ""
    print(f"zfarm: profile {args.profile!r} stopped{extra}")
    return 0


def format_status(s: dict) -> str:
    lines = [f"profile {s['profile']} ({s.get('launcher') or '?'} engines), connection file {s['connection_file']}"]
    engines = s.get("engines", [])
    lines.append(f"engines: {len(engines)}")
    if engines:
        lines.append(f"  {'id':>4}  {'host':<28} {'running':>7} {'queued':>6} {'done':>8}")
        for e in sorted(engines, key=lambda e: e["id"]):
            lines.append(f"  {e['id']:>4}  {str(e.get('host', '')):<28} {e.get('inflight', 0):>7} "
                         f"{e.get('queued', 0):>6} {e.get('done', 0):>8}")
    lines.append(f"queue: {s.get('queued', 0)} waiting for an engine, {s.get('pending', 0)} unfinished in all")
    lines.append(f"tasks: {s.get('done', 0)} done, {s.get('failed', 0)} failed")
    lines.append(f"throughput: {s.get('throughput', 0.0):.1f} tasks/s")
    lines.append(f"clients: {s.get('clients', 0)}")
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    from ._profiles import cluster_status

    s = cluster_status(args.profile, interval=args.interval)
    print(json.dumps(s, indent=1, default=str) if args.json else format_status(s))
    return 0


def _list(args: argparse.Namespace) -> int:
    from ._profiles import list_profiles, profile_dir, running_state

    names = list_profiles()
    for name in names:
        state = running_state(name)
        print(f"{name}\t{'running' if state else 'stale'}\t{(state or {}).get('launcher', '')}")
    if not names:
        print(f"no clusters in {profile_dir()}")
    return 0


def _engine(args: argparse.Namespace, rest: List[str]) -> int:
    from ._cluster import find_binary
    from ._profiles import connection_file, profile_path

    connection_file(args.profile)  # a clear error if the profile is not running
    engine = find_binary("zfarm-engine")
    os.execv(engine, [engine, "--connection-file", profile_path(args.profile, ".engine.json"), *rest])
    return 1  # not reached


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main

        return demo_main(argv[1:])
    parser = build_parser()
    if argv[:1] == ["engine"]:
        args, rest = parser.parse_known_args(argv)
    else:
        args, rest = parser.parse_args(argv), []
    try:
        if args.command == "engine":
            return _engine(args, rest)
        return {"start": _start, "stop": _stop, "status": _status, "list": _list}[args.action](args)
    except ZfarmError as exc:  # includes TimeoutError
        print(f"zfarm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
