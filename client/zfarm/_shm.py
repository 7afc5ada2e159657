"""Large payload buffers through shared memory between processes of one host.

A sender writes an out-of-band buffer of at least :data:`SHM_MIN` bytes once
into a file ``/dev/shm/zfarm-<pid>-<random>`` (mode 0600) and sends a short
*descriptor* frame in its place.  The receiver maps the file copy-on-write
(``MAP_PRIVATE``): the array it unpickles is writable and private to it, and
no byte is copied until it writes.  The broker sees an ordinary small frame.

A descriptor is ``MAGIC``, a flags byte, the size (u64, little-endian) and
the file's name.  It is a few dozen bytes, while a real out-of-band frame is
never smaller than ``_serialize.OUT_OF_BAND_MIN`` (64 KiB), so the two cannot
be confused.

Who removes a file:

* client -> engines: the client, once every task of that submission has
  ended (:func:`release`, hooked on the AsyncResult).
* engine -> client (results): the descriptor says *claim*; the receiver
  unlinks the file right after mapping it.
* whatever a process created and still exists when it exits (atexit), and
  files of processes that are gone (:func:`remove_stale`, when a local
  Cluster starts).

>>> frames, names = export([b"pickle", bytes(SHM_MIN)], claim=True)  # doctest: +SKIP
>>> len(frames[1]) < 100                                              # doctest: +SKIP
True
"""
from __future__ import annotations

import atexit
import mmap
import os
import re
import secrets
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from ._errors import ZfarmError

SHM_DIR = "/dev/shm"
# Buffers smaller than this go through the socket: below about a megabyte a
# file's create/map/unlink costs more than the copies it saves.
SHM_MIN = int(os.environ.get("ZFARM_SHM_MIN", 1 << 20))
# "0" turns shared memory off in this process; "1" (set by a local Cluster
# for its engines) lets an engine send its large results through it.
ENV = "ZFARM_SHM"
# How long a client trusts its last look at where the engines run.
HOST_CHECK_TTL = 5.0
# Files are written in pieces of this size (one write call is capped below 2 GiB).
WRITE_CHUNK = 256 << 20

MAGIC = b"\x00ZFSHM\x01\x00"
_HEAD = struct.Struct("<8sBQ")  # magic, flags, size
FLAG_CLAIM = 1  # the receiver unlinks the file once it has mapped it
DESCRIPTOR_MAX = 256
_NAME = re.compile(r"zfarm-(\d+)-[0-9a-f]{16}")


class ShmError(ZfarmError, OSError):
    """A shared-memory descriptor could not be turned back into its buffer."""


# Files this process created and has not released; removed at exit.
_created: set = set()
_created_lock = threading.Lock()
# Above this many remembered files, forget those already gone (claimed).
_PRUNE_AT = 256


def enabled_by_env(default: bool) -> bool:
    value = os.environ.get(ENV, "")
    if value == "0":
        return False
    if value == "1":
        return True
    return default


# -- sending -------------------------------------------------------------------
def _remember(name: str) -> None:
    with _created_lock:
        if len(_created) >= _PRUNE_AT:
            for old in [n for n in _created if not os.path.exists(os.path.join(SHM_DIR, n))]:
                _created.discard(old)
        _created.add(name)


def _write_file(data: memoryview) -> str:
    name = f"zfarm-{os.getpid()}-{secrets.token_hex(8)}"
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    try:
        _remember(name)
        # os.write (not a writable mapping): page faults on a fresh mapping
        # make the copy about twice as slow.
        done, total = 0, data.nbytes
        while done < total:
            done += os.write(fd, data[done:done + WRITE_CHUNK])
    except BaseException:
        os.close(fd)
        release([name])
        raise
    os.close(fd)
    return name


def descriptor(name: str, nbytes: int, claim: bool) -> bytes:
    return _HEAD.pack(MAGIC, FLAG_CLAIM if claim else 0, nbytes) + name.encode("ascii")


def export(frames: Sequence[Any], *, claim: bool, minimum: Optional[int] = None) -> Tuple[List[Any], List[str]]:
    """Moves out-of-band buffers (``frames[1:]``) of ``minimum`` bytes or more
    into shared memory.  Returns the new frames and the names of the files made.

    A buffer that cannot be written (no /dev/shm, full) stays in its frame.
    """
    limit = SHM_MIN if minimum is None else minimum
    out: List[Any] = list(frames)
    names: List[str] = []
    for i in range(1, len(out)):
        view = memoryview(out[i])
        if view.nbytes < max(limit, 1) or not view.c_contiguous:
            continue
        try:
            name = _write_file(view.cast("B") if view.format != "B" or view.ndim != 1 else view)
        except OSError:
            continue  # no /dev/shm, or full: the socket still works
        names.append(name)
        out[i] = descriptor(name, view.nbytes, claim)
    return out, names


def export_messages(messages: Sequence[tuple], enabled: Callable[[], bool]) -> Tuple[List[tuple], List[str]]:
    """:func:`export` for the client's (targets, frames, ...) messages.

    ``enabled`` is asked only when some buffer is large enough to matter.
    """
    if not any(_large(frames) for _, frames, *_ in messages) or not enabled():
        return list(messages), []
    out, names = [], []
    for targets, frames, *rest in messages:
        if frames is None:  # a task that ends locally, never sent
            out.append((targets, frames, *rest))
            continue
        frames, made = export(frames, claim=False)
        names += made
        out.append((targets, frames, *rest))
    return out, names


def _large(frames: Optional[Sequence[Any]]) -> bool:
    return frames is not None and any(memoryview(f).nbytes >= SHM_MIN for f in frames[1:])


def export_result(frames: List[Any]) -> List[Any]:
    """An engine's result frames: large buffers through shared memory when
    the engine was started by a local Cluster (``ZFARM_SHM=1``)."""
    if not _ENGINE_SENDS or not _large(frames):
        return frames
    return export(frames, claim=True)[0]


def release(names: Sequence[str]) -> None:
    """Removes files this process made (those already gone are fine)."""
    for name in names:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except OSError:
            pass
        with _created_lock:
            _created.discard(name)


def _remove_all_created() -> None:
    # Only this process's own files: a forked child inherits the set.
    mine = f"zfarm-{os.getpid()}-"
    with _created_lock:
        names = [n for n in _created if n.startswith(mine)]
    release(names)


atexit.register(_remove_all_created)


# -- receiving -----------------------------------------------------------------
def is_descriptor(frame: Any) -> bool:
    """True if ``frame`` is a descriptor rather than a buffer's bytes."""
    try:
        view = memoryview(frame)
        return _HEAD.size < view.nbytes <= DESCRIPTOR_MAX and bytes(view.cast("B")[:8]) == MAGIC
    except (TypeError, ValueError):
        return False


def open_descriptor(frame: Any) -> mmap.mmap:
    """Maps the file a descriptor names, copy-on-write; unlinks it if the
    sender asked the receiver to claim it.  Raises :class:`ShmError`."""
    raw = bytes(memoryview(frame).cast("B"))
    _, flags, nbytes = _HEAD.unpack_from(raw)
    try:
        name = raw[_HEAD.size:].decode("ascii")
    except UnicodeDecodeError:
        name = ""
    if not _NAME.fullmatch(name):
        raise ShmError(f"zfarm: malformed shared-memory descriptor (name {raw[_HEAD.size:]!r})")
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ShmError(f"zfarm: cannot open the shared-memory buffer {path} ({exc.strerror}): its sender "
                       f"removed it, or sender and receiver are not on one host (then set {ENV}=0 for "
                       f"the sender)") from None
    try:
        size = os.fstat(fd).st_size
        if size < nbytes:  # mapping past the end would kill us with SIGBUS
            raise ShmError(f"zfarm: shared-memory buffer {path} holds {size} bytes, expected {nbytes}")
        return mmap.mmap(fd, nbytes, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
        if flags & FLAG_CLAIM:
            try:
                os.unlink(path)
            except OSError:
                pass


def import_buffers(frames: Sequence[Any]) -> List[Any]:
    """``frames`` with every descriptor replaced by its mapped buffer."""
    return [open_descriptor(f) if is_descriptor(f) else f for f in frames]


def discard(frames: Sequence[Any]) -> None:
    """Unlinks the claimable files of frames nobody will read (a dropped result)."""
    for f in frames[1:]:
        if is_descriptor(f):
            raw = bytes(memoryview(f).cast("B"))
            name = raw[_HEAD.size:].decode("ascii", "replace")
            if raw[8] & FLAG_CLAIM and _NAME.fullmatch(name):
                try:
                    os.unlink(os.path.join(SHM_DIR, name))
                except OSError:
                    pass


# -- housekeeping and policy -------------------------------------------------------
def files_of(pid: int) -> List[str]:
    """Names of the files process ``pid`` made that still exist."""
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    prefix = f"zfarm-{pid}-"
    return sorted(n for n in entries if n.startswith(prefix) and _NAME.fullmatch(n))


def remove_stale() -> int:
    """Removes this user's files whose creating process is gone; returns how many."""
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return 0
    removed = 0
    for name in entries:
        m = _NAME.fullmatch(name)
        if not m or _alive(int(m.group(1))):
            continue
        path = os.path.join(SHM_DIR, name)
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            os.unlink(path)
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SendPolicy:
    """Whether a client sends large buffers through shared memory.

    Yes when its engines are known to be local (it was made for a local
    Cluster), or when every registered engine reports this host; the latter
    is looked up at most every :data:`HOST_CHECK_TTL` seconds, and only when
    a large buffer is about to be sent.
    """

    def __init__(self, local: bool):
        self.local = local
        self._answer = False
        self._checked = -HOST_CHECK_TTL

    def enabled(self, client: Any) -> bool:
        if not enabled_by_env(True) or not os.path.isdir(SHM_DIR):
            return False
        if self.local:
            return True
        now = time.monotonic()
        from ._asyncresult import _in_delivery  # (a module that imports this one)

        on_receiver = _in_delivery()  # a status request would wait for this very thread
        if now - self._checked >= HOST_CHECK_TTL and not on_receiver:
            try:
                engines = client.queue_status(timeout=10.0).get("engines", [])
            except Exception:  # noqa: BLE001 - no answer: stay with the socket
                engines = []
            here = socket.gethostname()
            self._answer = bool(engines) and all(
                str(e.get("host", "")).rsplit(":", 1)[0] == here for e in engines)
            self._checked = now
        return self._answer


_ENGINE_SENDS = enabled_by_env(False)


# -- gather of numpy arrays into one file ------------------------------------------
# A gather of numpy arrays from engines of this host: the client makes one
# file of the final size, each engine writes its part at its offset, and the
# client's array is a mapping of that file (no concatenation).  The engine
# side runs as ordinary "apply" tasks calling the two functions below.
def _numpy_array(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return (numpy is not None and type(value) is numpy.ndarray and value.ndim >= 1
            and not value.dtype.hasobject)


def gather_probe(name: str) -> tuple:
    """Engine side, first step: ``("array", dtype, shape, inline)`` for a
    plain numpy array (``inline`` is the array itself when it is below
    :data:`SHM_MIN`, else None), ``("value", value)`` for anything else."""
    from . import _worker

    value = _worker._lookup(name)
    if _numpy_array(value):
        return ("array", value.dtype, value.shape, value if value.nbytes < SHM_MIN else None)
    return ("value", value)


def gather_part(name: str, file: str, offset: int, dtype: Any, shape: tuple) -> tuple:
    """Engine side, second step: writes array ``name`` at ``offset`` of the
    client's file; ``("written",)``, or ``("value", value)`` when it cannot
    (the array changed since the probe, the file is not on this host)."""
    from . import _worker

    value = _worker._lookup(name)
    if not (_numpy_array(value) and value.dtype == dtype and value.shape == tuple(shape)) \
            or not _NAME.fullmatch(file):
        return ("value", value)
    try:
        fd = os.open(os.path.join(SHM_DIR, file), os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return ("value", value)  # another host, or the client gave up
    try:
        if os.fstat(fd).st_size < offset + value.nbytes:
            return ("value", value)
        # os.pwrite rather than a writable mapping: no page faults in this
        # process (measured about twice as fast for 100 MB).
        if value.flags.c_contiguous or value.size == 0:
            _pwrite_all(fd, memoryview(value).cast("B"), offset)
        else:  # Fortran order or strided: contiguous copies, a block of rows at a time
            rows = max(1, WRITE_CHUNK // max(1, value[0].nbytes))
            numpy = sys.modules["numpy"]
            for start in range(0, value.shape[0], rows):
                block = numpy.ascontiguousarray(value[start:start + rows])
                _pwrite_all(fd, memoryview(block).cast("B"), offset)
                offset += block.nbytes
    finally:
        os.close(fd)
    return ("written",)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done, total = 0, data.nbytes
    while done < total:
        done += os.pwrite(fd, data[done:done + WRITE_CHUNK], offset + done)


class GatherFile:
    """Client side: one file of ``nbytes`` that engines write parts into.

    The file is mapped (shared, no page touched yet) as soon as it is made,
    so :meth:`close` can unlink it before the result is read; the mapping
    lives as long as the array made by :meth:`array`.
    """

    def __init__(self, nbytes: int):
        self.name = f"zfarm-{os.getpid()}-{secrets.token_hex(8)}"
        path = os.path.join(SHM_DIR, self.name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            _remember(self.name)
            os.ftruncate(fd, nbytes)  # a sparse file: the engines' writes allocate its pages
            self._map: Optional[mmap.mmap] = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED,
                                                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            release([self.name])
            raise
        finally:
            os.close(fd)

    def close(self) -> None:
        """Unlinks the file (the mapping stays valid)."""
        release([self.name])

    def array(self, dtype: Any, shape: tuple) -> Any:
        """The whole file as a C-ordered numpy array; the file keeps no other user."""
        import numpy

        buf, self._map = self._map, None
        return numpy.frombuffer(buf, dtype=dtype).reshape(shape)
