"""Writes the seed corpus of the fuzz targets (tools/fuzz/corpus/).

Run once after changing the input formats (fuzz_input.hpp); the output is
committed.  Seeds are well-formed conversations, so the fuzzers start deep
in the protocol instead of at the signature check.
"""
from __future__ import annotations

import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SIG = b"ZFRM\x01"

# Message types and statuses (common/protocol.hpp).
REGISTER, REGISTER_REPLY, HEARTBEAT, SUBMIT, TASK, RESULT, STATUS = 1, 2, 3, 4, 5, 6, 7
SHUTDOWN, ERROR, HELLO, ABORT, INTERRUPT, ACK, FETCH = 9, 10, 11, 12, 13, 14, 15
OUTPUT = 18
REGISTER_REV = 4  # the revision a Register announces to be sent Batches
BATCH = 20


def mp(v) -> bytes:
    """Just enough msgpack for headers."""
    if isinstance(v, bool):
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        if v >= 0:
            return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, str):
        b = v.encode()
        return (bytes([0xA0 | len(b)]) if len(b) < 32 else b"\xd9" + bytes([len(b)])) + b
    if isinstance(v, list):
        return bytes([0x90 | len(v)]) + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        return bytes([0x80 | len(v)]) + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


def header(t, id=0, targets=(), status=0, aux=0, text="", opts=None) -> bytes:
    items = [t, id, list(targets), status, aux, text]
    if opts:
        items.append(opts)
    return mp(items)


def body(*records) -> bytes:
    """A Batch's body: each record a list of frames (header, payload ...)."""
    out = b""
    for frames in records:
        out += struct.pack(">I", len(frames)) + b"".join(struct.pack(">I", len(f)) + f for f in frames)
    return out


def batch(*records) -> bytes:
    return header(BATCH, 0, [], 0, len(records))


def block(*frames: bytes) -> bytes:
    """A frames block of fuzz_input.hpp."""
    return bytes([len(frames)]) + b"".join(struct.pack("<H", len(f)) + f for f in frames)


def codec(flags: int, *frames: bytes) -> bytes:
    return bytes([flags]) + block(*frames)


def client(who: int, hdr: bytes, *payload: bytes) -> bytes:
    return bytes([0, who, 1]) + block(hdr, *payload)


def engine(who: int, hdr: bytes, *payload: bytes) -> bytes:
    return bytes([1, who, 1]) + block(hdr, *payload)


def tick(ms: int) -> bytes:
    return bytes([2]) + struct.pack("<H", ms)


def write(kind: str, data: bytes) -> None:
    folder = os.path.join(HERE, "corpus", kind)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def main() -> None:
    # -- codec ---------------------------------------------------------------
    write("codec", codec(0, SIG, header(SUBMIT, 1, [-1], opts={"retries": 2}), b"payload"))
    write("codec", codec(1, header(SUBMIT, 5, [0, 1], opts={"timeout_ms": 100, "priority": -3,
                                                          "after": [1, 2], "follow": [3],
                                                          "engines": [0]}), b"a", b""))
    write("codec", codec(5, header(INTERRUPT, 0, [2], opts={"ids": [7, 8]})))
    write("codec", codec(1, header(HELLO, 0, [], text="me", opts={"session": "s1", "unknown": [1]})))
    write("codec", codec(3, header(RESULT, 9, [], 3, 1, "interrupted\nTraceback")))
    write("codec", codec(0, b"ZFRM\x02", header(HEARTBEAT)))
    write("codec", codec(1, b"\xdd\xff\xff\xff\xff"))
    write("codec", codec(1, header(RESULT, 1, [], 0, 0, "x", opts={"retries": "no"})))
    write("codec", codec(0, SIG, header(OUTPUT, 4, [0, 6], 1, 2), b"line\n", b""))
    write("codec", codec(0, SIG, header(OUTPUT, 4, [0], 8, 2), b"one frame"))
    subs = [[header(SUBMIT, 1, [-1]), b"a"], [header(SUBMIT, 2, [-1], opts={"priority": 1}), b"b", b""]]
    write("codec", codec(1, batch(*subs), body(*subs)))
    res = [[header(RESULT, 1, [5, 7]), b"r"], [header(HEARTBEAT)]]
    write("codec", codec(1, batch(*res), body(*res)))
    # -- scheduler -----------------------------------------------------------
    reg = lambda credit: header(REGISTER, 0, [], 0, credit, "host:1")  # noqa: E731
    write("scheduler", engine(0, reg(2)) + client(0, header(HELLO, opts={"session": "s"}))
          + client(0, header(SUBMIT, 1, [-1]), b"task") + engine(0, header(RESULT, 1, [], 0, 0), b"r")
          + client(0, header(STATUS, 2)))
    write("scheduler", engine(0, reg(1)) + engine(1, reg(1)) + client(0, header(SUBMIT, 10, [0, 1]), b"t")
          + client(1, header(SUBMIT, 20, [-1], opts={"retries": 1}), b"t") + tick(50)
          + engine(0, header(HEARTBEAT, 0, [], 0, 0)) + tick(400) + tick(400))
    write("scheduler", engine(0, reg(1)) + client(0, header(SUBMIT, 1, [-1]), b"a")
          + client(0, header(SUBMIT, 2, [-1], opts={"after": [1], "priority": 5}), b"b")
          + client(0, header(SUBMIT, 3, [-1], opts={"follow": [1], "timeout_ms": 50}), b"c")
          + client(0, header(ABORT, opts={"ids": [2, 3]})) + client(0, header(INTERRUPT, opts={"ids": [1]}))
          + engine(0, header(RESULT, 1, [], 3, 0, "interrupted")) + tick(100))
    write("scheduler", engine(0, reg(3)) + client(0, header(SUBMIT, 1, [-1], opts={"timeout_ms": 10}), b"a")
          + tick(20) + engine(0, header(RESULT, 1, [], 0, 0), b"late")
          + client(0, header(ACK, opts={"ids": [1]})) + client(2, header(FETCH, opts={"ids": [1, 99]}))
          + client(0, header(INTERRUPT, [0])))
    write("scheduler", engine(3, reg(1)) + engine(3, header(SHUTDOWN)) + engine(3, header(RESULT, 4))
          + client(1, header(SHUTDOWN, 1)) + client(1, header(SUBMIT, 2, [-1])))
    write("scheduler", engine(0, reg(1)) + engine(1, reg(1)) + client(0, header(HELLO, opts={"session": "s"}))
          + client(0, header(SUBMIT, 1, [-1]), b"t") + engine(0, header(OUTPUT, 1, [0, 0]), b"out\n", b"")
          + engine(1, header(OUTPUT, 1, [0, 0]), b"x", b"") + engine(0, header(OUTPUT, 1, [4, 0], 2), b"", b"")
          + engine(0, header(OUTPUT, 1, [-1, 0]), b"bad") + engine(0, header(RESULT, 1, [], 0, 0), b"r")
          + engine(0, header(OUTPUT, 1, [4, 0]), b"late", b""))
    regb = header(REGISTER, 0, [], 0, 4, "host:1", opts={"revision": REGISTER_REV})
    subs = [[header(SUBMIT, i, [-1]), b"t"] for i in (1, 2, 3)]
    res = [[header(RESULT, i, [1, 2], 0, 0), b"r"] for i in (1, 2)]
    write("scheduler", engine(0, regb) + client(0, header(HELLO, opts={"session": "s", "revision": 4}))
          + client(0, batch(*subs), body(*subs)) + engine(0, batch(*res), body(*res))
          + client(0, header(ACK, opts={"ids": [1, 2]})) + engine(0, header(RESULT, 3, [], 0, 0), b"r"))
    write("scheduler", bytes([0, 0, 0]) + block(b"junk") + bytes([1, 1, 2]) + block(SIG, b"\xc1"))


if __name__ == "__main__":
    main()
