#!/usr/bin/env python3
"""Where one apply+get round trip spends its time, from the kernel's scheduler trace.

    sudo python tools/bench/roundtrip_trace.py [--trips 200] [--pin auto|on|off] [--call apply|all] [--show]

Needs root and tracefs (mounted at /sys/kernel/tracing if it is not yet).
Starts a 2-engine Cluster, warms it up, then records the scheduler's
sched_switch and sched_wakeup events around each load-balanced
``apply_async(int).get()`` (``--call all``: ``rc[:].execute("pass").get()``
on both engines), with a trace marker before and after it.  For
each round trip it adds up how long each thread of the cluster was on a
CPU between the two markers (client main thread, client receiver thread,
each process's libzmq I/O thread, broker, engine) and how long nothing of
the cluster ran (waiting for a CPU to wake up or to be free); it prints
the median of each over all round trips.  ``--show`` also prints the
event timeline of the median round trip.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import threading
import time

TRACEFS = "/sys/kernel/tracing"
EVENT = re.compile(r"^\s*(?P<who>.+?)-(?P<tid>\d+)\s+\[(?P<cpu>\d+)\]\s.*?\s(?P<ts>\d+\.\d+): "
                   r"(?P<ev>\w+): (?P<rest>.*)$")
SWITCH = re.compile(r"prev_comm=.* prev_pid=(?P<prev>\d+) .*==> next_comm=.* next_pid=(?P<next>\d+)")


def write(name: str, value: str) -> None:
    with open(os.path.join(TRACEFS, name), "w") as f:
        f.write(value)


def thread_names(pids: dict) -> dict:
    """tid -> role for every thread of the cluster's processes."""
    names = {}
    for pid, role in pids.items():
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            names[int(tid)] = f"{role} I/O thread" if comm.startswith("ZMQbg") else f"{role} {comm}"
    return names


def parse(text: str):
    """Round trips as lists of (time us, cpu, event, fields)."""
    trips, cur = [], None
    for line in text.splitlines():
        m = EVENT.match(line)
        if not m:
            continue
        ts = float(m["ts"]) * 1e6
        if m["ev"] == "tracing_mark_write":
            if "rt-start" in m["rest"]:
                cur = [(ts, m["cpu"], "start", None)]
            elif cur is not None:
                cur.append((ts, m["cpu"], "end", None))
                trips.append(cur)
                cur = None
        elif cur is not None and m["ev"] == "sched_switch":
            s = SWITCH.search(m["rest"])
            if s:
                cur.append((ts, m["cpu"], "switch", (int(s["prev"]), int(s["next"]))))
        elif cur is not None and m["ev"] == "sched_wakeup":
            pid = re.search(r"pid=(\d+)", m["rest"])
            cur.append((ts, m["cpu"], "wakeup", int(pid[1]) if pid else None))
    return trips


def on_cpu(trip, names: dict, main_tid: int) -> dict:
    """Time each cluster thread ran within one round trip, and time none did
    (``names``: tid -> role for every cluster thread, main_tid's included)."""
    t0, t1 = trip[0][0], trip[-1][0]
    running = {trip[0][1]: main_tid}  # the marker's CPU runs the client's main thread
    since = {trip[0][1]: t0}
    spent: dict = {}
    idle = 0.0
    last = t0

    def account(upto):
        nonlocal idle, last
        if not any(tid in names for tid in running.values()):
            idle += upto - last
        last = upto

    for ts, cpu, ev, data in trip[1:]:
        account(ts)
        if ev == "switch":
            prev, nxt = data
            if cpu in since and running.get(cpu) is not None:
                role = names.get(prev, "other processes")
                spent[role] = spent.get(role, 0.0) + ts - since[cpu]
            running[cpu] = nxt
            since[cpu] = ts
    for cpu, tid in running.items():
        if tid is not None and cpu in since:
            role = names.get(tid, "other processes")
            spent[role] = spent.get(role, 0.0) + t1 - since[cpu]
    account(t1)
    spent["no cluster thread on a CPU"] = idle
    spent["total"] = t1 - t0
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trips", type=int, default=200)
    ap.add_argument("--pin", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--call", choices=["apply", "all"], default="apply",
                    help="a load-balanced apply_async(int), or execute('pass') on all engines")
    ap.add_argument("--show", action="store_true", help="print the median round trip's events")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(TRACEFS, "trace_marker")):
        os.makedirs(TRACEFS, exist_ok=True)
        if os.system(f"mount -t tracefs nodev {TRACEFS}") != 0:
            raise SystemExit("tracefs is not available (root is needed)")

    import zfarm

    cluster = zfarm.Cluster(n=2, pin={"auto": "auto", "on": True, "off": False}[args.pin])
    with cluster as rc:
        lv = rc.load_balanced_view()
        dv = rc[:]
        if args.call == "apply":
            def call():
                return lv.apply_async(int)
        else:
            def call():
                return dv.execute("pass")
        for _ in range(500):
            call().get(60)
        pids = {cluster.broker.pid: "broker", os.getpid(): "client"}
        pids.update({p.pid: f"engine{i}" for i, p in enumerate(cluster.engines)})
        names = thread_names(pids)
        main_tid = threading.get_native_id()
        names[main_tid] = "client main thread"
        write("trace", "")
        write("buffer_size_kb", "16384")
        for ev in ("sched_switch", "sched_wakeup"):
            write(f"events/sched/{ev}/enable", "1")
        marker = open(os.path.join(TRACEFS, "trace_marker"), "w")
        write("tracing_on", "1")
        try:
            for _ in range(args.trips):
                marker.write("rt-start\n")
                marker.flush()
                call().get(60)
                marker.write("rt-end\n")
                marker.flush()
        finally:
            write("tracing_on", "0")
            for ev in ("sched_switch", "sched_wakeup"):
                write(f"events/sched/{ev}/enable", "0")
            marker.close()
        with open(os.path.join(TRACEFS, "trace")) as f:
            text = f.read()
        write("trace", "")
        placed = cluster.cpus
    trips = parse(text)
    if not trips:
        raise SystemExit("no round trip was recorded (trace buffer too small?)")
    rows = [on_cpu(t, names, main_tid) for t in trips]
    roles = sorted({k for r in rows for k in r}, key=lambda k: (k == "total", k))
    print(f"{len(rows)} round trips, pinned: {placed}, load {os.getloadavg()[0]:.2f}")
    print("median us per round trip (between the markers; the rows do not add up to the total:")
    print("two CPUs run at once, and medians are taken row by row)")
    for role in roles:
        print(f"  {role:36s} {statistics.median(r.get(role, 0.0) for r in rows):7.1f}")
    if args.show:
        mid = sorted(range(len(rows)), key=lambda i: rows[i]["total"])[len(rows) // 2]
        t0 = trips[mid][0][0]
        for ts, cpu, ev, data in trips[mid]:
            if ev == "switch":
                what = f"{names.get(data[0], 'other')} -> {names.get(data[1], 'other')}"
            elif ev == "wakeup":
                what = f"wakes {names.get(data, 'other')}"
            else:
                what = ev
            print(f"  {ts - t0:7.1f} us  cpu{cpu}  {what}")


if __name__ == "__main__":
    main()
