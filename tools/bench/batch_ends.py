#!/usr/bin/env python3
"""Instructions per task of an engine or a client, with and without Batches.

    python tools/bench/batch_ends.py engine --tasks-in batch --revision 4
    python tools/bench/batch_ends.py client --results batch --submit map

The broker is played by this script (pyzmq, not measured), so the peer
under ``valgrind --tool=callgrind`` gets exactly the messages chosen, in
bursts of ``--burst`` tasks: the next burst goes out once every Result of
the last one is back.  Each measurement runs twice (``--tasks``, the
smaller and the larger count, after a warm-up) and prints the difference
of the instruction totals divided by the difference of the counts.

engine
    One engine (``--prefetch`` = ``--prefetch-max`` = the burst); the
    broker announces ``--revision`` and sends each burst's Tasks as one
    Batch (``--tasks-in batch``, needs an engine of revision 4) or as
    messages of their own.  The engine sends Results in Batches only when
    the revision is 4 (and only as its hold allows: under callgrind a task
    runs some 50 times longer, so the 300 us hold ends sooner); the counts
    of Batches received are printed.
client
    The client submits each burst with ``apply_async(int)`` one by one or
    with ``map(int, range(burst), chunksize=1)`` (``--submit``), then waits
    for all; the broker answers each burst's Results as one Batch
    (``--results batch``) or one by one, and announces revision 4 unless
    ``--revision`` says otherwise (an older client ignores it).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

from callgrind_calls import _total  # a callgrind file's instruction count (this folder)

SIG = b"ZFRM\x01"
REGISTER, REGISTER_REPLY, HEARTBEAT, SUBMIT, TASK, RESULT = 1, 2, 3, 4, 5, 6
HELLO, WELCOME, BATCH = 11, 17, 20
HEARTBEAT_MS = 60000
WARMUP = 320
START_WAIT_S = 300  # Python starts slowly under valgrind
STOP_WAIT_S = 120


def _mp(v) -> bytes:
    """Just enough msgpack for a header."""
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        return b"\xcf" + struct.pack(">Q", v) if v >= 0 else b"\xd3" + struct.pack(">q", v)
    if isinstance(v, str):
        b = v.encode()
        return b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, list):
        return b"\xdc" + struct.pack(">H", len(v)) + b"".join(_mp(x) for x in v)
    raise TypeError(v)


def header(mtype, mid=0, targets=(), status=0, aux=0, text="", revision=None) -> bytes:
    items = [_mp(mtype), _mp(mid), _mp(list(targets)), _mp(status), _mp(aux), _mp(text)]
    if revision is not None:
        items.append(b"\x81" + _mp("revision") + _mp(revision))
    return bytes([0x90 | len(items)]) + b"".join(items)


def pack(records) -> list:
    body = b"".join(struct.pack(">I", len(r)) + b"".join(struct.pack(">I", len(f)) + f for f in r)
                    for r in records)
    return [SIG, header(BATCH, aux=len(records)), body]


def unpack(body: bytes, n: int) -> list:
    records, at = [], 0
    for _ in range(n):
        (k,) = struct.unpack_from(">I", body, at)
        at += 4
        frames = []
        for _ in range(k):
            (size,) = struct.unpack_from(">I", body, at)
            frames.append(body[at + 4:at + 4 + size])
            at += 4 + size
        records.append(frames)
    return records


class Router:
    def __init__(self, endpoint: str):
        import zmq

        self.zmq = zmq
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind(endpoint)

    def messages(self, timeout_s: float):
        """(identity, header list, payload frames) of each message, a
        Batch's records one by one; None when nothing came in time."""
        from zfarm import _core

        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        frames = self.sock.recv_multipart()
        h = _core.decode_msgpack(frames[2])
        if h[0] == BATCH:
            return frames[0], True, [(_core.decode_msgpack(r[0]), r[1:]) for r in unpack(frames[3], h[4])]
        return frames[0], False, [(h, frames[3:])]

    def close(self):
        self.sock.close(linger=0)
        self.ctx.term()


# -- the engine -----------------------------------------------------------------------


def run_engine(args, n: int, out_dir: str, tag: str) -> dict:
    from zfarm._cluster import find_binary

    endpoint = f"ipc://{out_dir}/engine.sock"
    router = Router(endpoint)
    cmd = ["valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={out_dir}/{tag}.%p",
           find_binary("zfarm-engine"), "--url", endpoint, "--prefetch", str(args.burst),
           "--prefetch-max", str(args.burst), "--heartbeat-ms", str(HEARTBEAT_MS)]
    log = open(f"{out_dir}/{tag}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    payload = [pickle.dumps(("apply", pickle.dumps(int), (), {}), protocol=5)]
    stats = {"result_messages": 0, "result_batches": 0}
    try:
        engine = None
        deadline = time.monotonic() + START_WAIT_S
        while engine is None:
            assert time.monotonic() < deadline, "the engine did not register"
            got = router.messages(1.0)
            if got and got[2][0][0][0] == REGISTER:
                engine = got[0]
                router.sock.send_multipart([engine, SIG, header(REGISTER_REPLY, 0, [], HEARTBEAT_MS, 0, "x",
                                                                 args.revision)])
        next_id = 1
        for burst in range((WARMUP + n) // args.burst):
            ids = list(range(next_id, next_id + args.burst))
            next_id += args.burst
            tasks = [[header(TASK, i, [], 0, 0), *payload] for i in ids]
            if args.tasks_in == "batch":
                router.sock.send_multipart([engine, *pack(tasks)])
            else:
                for t in tasks:
                    router.sock.send_multipart([engine, SIG, *t])
            left = set(ids)
            while left:
                got = router.messages(STOP_WAIT_S)
                assert got is not None, "no result from the engine"
                if burst * args.burst >= WARMUP:
                    stats["result_messages"] += 1
                    stats["result_batches"] += 1 if got[1] else 0
                for h, _ in got[2]:
                    if h[0] == RESULT:
                        left.discard(h[1])
                    elif h[0] == HEARTBEAT:
                        router.sock.send_multipart([engine, SIG, header(HEARTBEAT)])
        proc.send_signal(signal.SIGTERM)
        proc.wait(STOP_WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()
        router.close()
    stats["instructions"] = sum(_total(os.path.join(out_dir, f)) for f in os.listdir(out_dir)
                                if f.startswith(tag + ".") and not f.endswith((".log", ".sock")))
    return stats


# -- the client -----------------------------------------------------------------------


def serve_client(args) -> None:
    """The broker for the client (not measured): runs until killed."""
    router = Router(args.endpoint)
    value = pickle.dumps(("ok", [0] if args.submit == "map" else 0, "", ""), protocol=5)  # a map chunk: a list
    waiting = []
    while True:
        got = router.messages(1.0)
        if got is None:
            continue
        identity, _, records = got
        for h, _ in records:
            if h[0] in (HELLO, HEARTBEAT):
                router.sock.send_multipart([identity, SIG, header(WELCOME, h[1], [], HEARTBEAT_MS, 0, "x",
                                                                   args.revision)])
            elif h[0] == SUBMIT:
                waiting.append(h[1])
        if len(waiting) >= args.burst:
            results = [[header(RESULT, i, [], 0, 0), value] for i in waiting]
            if args.results == "batch":
                router.sock.send_multipart([identity, *pack(results)])
            else:
                for r in results:
                    router.sock.send_multipart([identity, SIG, *r])
            waiting = []


def drive_client(args) -> None:
    """The client under callgrind."""
    import zfarm

    rc = zfarm.Client(args.connection_file)
    try:
        deadline = time.monotonic() + START_WAIT_S
        while not rc._welcomed.is_set():
            assert time.monotonic() < deadline, "no Welcome"
            time.sleep(0.05)
        lv = rc.load_balanced_view()
        for _ in range((WARMUP + args.n) // args.burst):
            if args.submit == "map":
                lv.map(int, range(args.burst), chunksize=1).get(STOP_WAIT_S)
            else:
                ars = [lv.apply_async(int) for _ in range(args.burst)]
                for ar in ars:
                    ar.get(STOP_WAIT_S)
        core = rc._core
        print(json.dumps({"batches_received": getattr(core, "batches_received", 0),
                          "batches_sent": getattr(core, "batches_sent", 0)}))
    finally:
        rc.close()


def run_client(args, n: int, out_dir: str, tag: str) -> dict:
    endpoint = f"ipc://{out_dir}/client.sock"
    cf = f"{out_dir}/connection.json"
    with open(cf, "w") as f:
        json.dump({"version": 1, "client": endpoint, "engine": endpoint}, f)
    broker = subprocess.Popen([sys.executable, __file__, "serve-client", "--endpoint", endpoint,
                               "--revision", str(args.revision), "--results", args.results,
                               "--burst", str(args.burst), "--submit", args.submit])
    try:
        out = subprocess.run(["valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={out_dir}/{tag}.%p",
                              sys.executable, __file__, "drive-client", "--connection-file", cf, "--n", str(n),
                              "--submit", args.submit, "--burst", str(args.burst)],
                             timeout=3600, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"the client failed:\n{out.stderr}")
    finally:
        broker.kill()
        broker.wait(10)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    stats["instructions"] = sum(_total(os.path.join(out_dir, f)) for f in os.listdir(out_dir)
                                if f.startswith(tag + "."))
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="role", required=True)
    e = sub.add_parser("engine")
    e.add_argument("--tasks-in", choices=["single", "batch"], default="single")
    c = sub.add_parser("client")
    c.add_argument("--results", choices=["single", "batch"], default="single")
    c.add_argument("--submit", choices=["apply", "map"], default="apply")
    s = sub.add_parser("serve-client")
    s.add_argument("--endpoint")
    s.add_argument("--results", choices=["single", "batch"], default="single")
    s.add_argument("--submit", choices=["apply", "map"], default="apply")
    d = sub.add_parser("drive-client")
    d.add_argument("--connection-file")
    d.add_argument("--n", type=int)
    d.add_argument("--submit", choices=["apply", "map"], default="apply")
    for p in (e, c, s, d):
        p.add_argument("--revision", type=int, default=4)
        p.add_argument("--burst", type=int, default=16)
    for p in (e, c):
        p.add_argument("--tasks", default="1000,3000", help="the two counts, small,large")
        p.add_argument("--keep", metavar="DIR", help="copy the callgrind files here (for callgrind_annotate)")
    args = ap.parse_args()
    if args.role == "serve-client":
        serve_client(args)
        return
    if args.role == "drive-client":
        drive_client(args)
        return
    small, large = (int(x) for x in args.tasks.split(","))
    run = run_engine if args.role == "engine" else run_client
    with tempfile.TemporaryDirectory(prefix="zfarm-batch-") as out_dir:
        a = run(args, small, out_dir, f"n{small}")
        b = run(args, large, out_dir, f"n{large}")
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for f in os.listdir(out_dir):
                if not f.endswith(".sock"):
                    shutil.copy(os.path.join(out_dir, f), args.keep)
    per = (b["instructions"] - a["instructions"]) / (large - small)
    extra = {k: (a[k], b[k]) for k in a if k != "instructions"}
    print(f"{args.role} {vars(args)}: {per:,.0f} instructions per task; {extra}")


if __name__ == "__main__":
    main()
