"""Client: the connection to a zfarm cluster.

>>> rc = zfarm.Client()                  # doctest: +SKIP
>>> rc.ids                               # doctest: +SKIP
[0, 1]
>>> rc[:].apply_sync(lambda: 42)         # doctest: +SKIP
[42, 42]
"""
from __future__ import annotations

import concurrent.futures
import os
import secrets
import threading
import time
import warnings
import weakref
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _core
from ._asyncresult import AsyncResult, decode_outcome
from ._cluster import Cluster, read_connection_file
from ._errors import STATUS_ABORTED, NoEnginesError, TimeoutError, ZfarmError

# Message types of the wire protocol (common/protocol.hpp).
MSG_SUBMIT = 4
MSG_RESULT = 6
MSG_STATUS = 7
MSG_STATUS_REPLY = 8
MSG_SHUTDOWN = 9
MSG_ERROR = 10
MSG_HELLO = 11
MSG_ABORT = 12
MSG_INTERRUPT = 13
MSG_ACK = 14
MSG_FETCH = 15
MSG_EVENT = 16
MSG_WELCOME = 17
LOAD_BALANCED = -1

# The receiver thread wakes at least this often to notice close().
RECV_TIMEOUT_MS = 100
RECV_BATCH = 8192


class Client:
    """A connection to a zfarm cluster.

    ``Client(connection_file)`` connects to a running cluster (the file its
    broker wrote).  With no argument it uses $ZFARM_CONNECTION_FILE if set;
    otherwise it starts a local cluster of ``n`` engines (default: one per
    core) and stops it again on :meth:`close` or at exit.
    """

    def __init__(self, connection_file: Optional[str] = None, *, n: Optional[int] = None,
                 timeout: float = 30.0, cluster: Optional[Cluster] = None):
        self._cluster: Optional[Cluster] = None
        if connection_file is None and cluster is None:
            connection_file = os.environ.get("ZFARM_CONNECTION_FILE")
        if connection_file is None:
            if cluster is None:
                cluster = Cluster(n=n)
                self._cluster = cluster  # ours: stopped on close()
            cluster.start()
            connection_file = cluster.connection_file
        self.connection_file = connection_file
        self.connection_info = read_connection_file(connection_file)
        # "curve" (present when the broker runs CURVE) holds the keys.
        self._core = _core.Core(self.connection_info["client"], self.connection_info.get("curve"))
        self._core.max_message_bytes = int(self.connection_info.get("max_message_bytes", -1))
        # Task ids are unique per session: 32 random bits, then a counter.
        self._session = secrets.randbits(31) << 32
        self._next = 1
        self._lock = threading.Lock()
        self._pending: Dict[int, Tuple[AsyncResult, int]] = {}
        self._status_waiters: Dict[int, concurrent.futures.Future] = {}
        self.errors: List[str] = []  # Error messages the broker sent us
        self._closed = False
        self._receiver = threading.Thread(target=_receive_loop, args=(weakref.ref(self), self._core),
                                          name="zfarm-receiver", daemon=True)
        self._receiver.start()
        self._finalizer = weakref.finalize(self, _close_core, self._core, self._receiver, self._cluster)
        if self._cluster is not None:
            try:
                self.wait_for_engines(self._cluster.n, timeout=timeout)
            except BaseException:
                self.close()
                raise

    # -- ids and submission --------------------------------------------------
    def _take_ids(self, k: int) -> int:
        with self._lock:
            first = self._session | self._next
            self._next += k
        return first

    def _submit(self, messages: List[Tuple[List[int], List[Any], int]], ar: AsyncResult) -> AsyncResult:
        """Sends tasks for ``ar``.

        Each message is (targets, frames, retries).  A message for k explicit
        targets makes k tasks, one per engine, sharing the frames.
        """
        if self._closed:
            raise ZfarmError("the client is closed")
        total = sum(1 if t == [LOAD_BALANCED] else len(t) for t, _, _ in messages)
        first = self._take_ids(total)
        wire = []
        index = 0
        with self._lock:
            for targets, frames, retries in messages:
                k = 1 if targets == [LOAD_BALANCED] else len(targets)
                task_id = first + index
                for j in range(k):
                    self._pending[task_id + j] = (ar, index + j)
                    ar.task_ids.append(task_id + j)
                wire.append((MSG_SUBMIT, task_id, targets, retries, "", frames))
                index += k
        if len(wire) == 1:
            self._core.send(*wire[0])
        else:
            self._core.send_many(wire)
        return ar

    def _on_message(
        self,
        mtype: int,
        mid: int,
        status: int,
        aux: int,
        text: str,
        frames: List[Any],
        targets: Optional[List[int]] = None,
        opts: Optional[Dict[str, Any]] = None,
    ) -> None:
        if mtype == MSG_RESULT:
            with self._lock:
                entry = self._pending.pop(mid, None)
            if entry is None:
                return  # a duplicate or a result for another session
            ar, index = entry
            ar._deliver(index, decode_outcome(mid, status, aux, text, frames))
        elif mtype == MSG_STATUS_REPLY:
            with self._lock:
                fut = self._status_waiters.pop(mid, None)
            if fut is not None and not fut.done():
                try:
                    fut.set_result(_core.decode_msgpack(frames[0]))
                except Exception as exc:  # noqa: BLE001
                    fut.set_exception(exc)
        elif mtype == MSG_ERROR:
            self.errors.append(text)
            if len(self.errors) > 100:
                del self.errors[:50]

    # -- cluster information --------------------------------------------------
    def queue_status(self, timeout: float = 10.0) -> Dict[str, Any]:
        """The broker's view: engines, queue lengths, counters."""
        request = self._take_ids(1)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._status_waiters[request] = fut
        self._core.send(MSG_STATUS, request, [], 0, "", [])
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            with self._lock:
                self._status_waiters.pop(request, None)
            raise TimeoutError(f"the broker did not answer a status request within {timeout} s") from None

    @property
    def ids(self) -> List[int]:
        """Ids of the engines registered now, ascending."""
        return sorted(e["id"] for e in self.queue_status()["engines"])

    def wait_for_engines(self, n: int, timeout: float = 30.0) -> List[int]:
        """Waits until at least ``n`` engines are registered; returns their ids."""
        deadline = time.monotonic() + timeout
        while True:
            ids = self.ids
            if len(ids) >= n:
                return ids
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids)} of {n} engines registered after {timeout} s")
            time.sleep(0.05)

    # -- views -----------------------------------------------------------------
    def __getitem__(self, key: Union[int, slice, Sequence[int]]):
        from ._view import DirectView

        ids = self.ids
        if not ids:
            raise NoEnginesError("no engines are registered")
        if isinstance(key, int):
            if key not in ids:
                raise IndexError(f"no engine with id {key}; engines: {ids}")
            return DirectView(self, key)
        if isinstance(key, slice):
            targets = ids[key]
        else:
            targets = list(key)
            missing = [t for t in targets if t not in ids]
            if missing:
                raise IndexError(f"no engines with ids {missing}; engines: {ids}")
        if not targets:
            raise IndexError(f"{key!r} selects no engines of {ids}")
        return DirectView(self, targets)

    def direct_view(self, targets: Union[str, int, Sequence[int]] = "all"):
        """A DirectView on ``targets`` ("all" means every engine registered now)."""
        return self[:] if targets == "all" else self[targets]

    def load_balanced_view(self, targets: Optional[Sequence[int]] = None):
        """A LoadBalancedView: tasks go to whichever engine is free."""
        from ._view import LoadBalancedView

        return LoadBalancedView(self, targets)

    def executor(self, **kwargs: Any):
        """A concurrent.futures.Executor running on this cluster's engines."""
        from ._executor import ZfarmExecutor

        return ZfarmExecutor(self.load_balanced_view(**kwargs))

    # -- waiting and closing -----------------------------------------------------
    @property
    def outstanding(self) -> int:
        """How many submitted tasks have no result yet."""
        with self._lock:
            return len(self._pending)

    def wait(self, jobs: Optional[Iterable[AsyncResult]] = None, timeout: Optional[float] = None) -> bool:
        """Waits for ``jobs`` (default: everything outstanding).  True if all ended."""
        if jobs is None:
            with self._lock:
                jobs = {ar for ar, _ in self._pending.values()}
        done, not_done = concurrent.futures.wait(list(jobs), timeout=timeout)
        return not not_done

    def shutdown(self) -> None:
        """Stops the whole cluster (broker and engines), then closes."""
        if not self._closed:
            self._core.send(MSG_SHUTDOWN, 0, [], 0, "", [])
        self.close()

    def close(self) -> None:
        """Closes the connection; stops the cluster if this client started it."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        # Nothing is lost silently: what never came back ends as aborted.
        with self._lock:
            pending, self._pending = self._pending, {}
            waiters, self._status_waiters = self._status_waiters, {}
        for task_id, (ar, index) in pending.items():
            ar._deliver(index, decode_outcome(task_id, STATUS_ABORTED, -1, "the client was closed", []))
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(ZfarmError("the client was closed"))

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<zfarm.Client {self.connection_info['client']}>"


def _receive_loop(client_ref: "weakref.ref[Client]", core: Any) -> None:
    # Holds only a weak reference, so an unused Client can be collected.
    while not core.closed:
        try:
            messages = core.recv(RECV_TIMEOUT_MS, RECV_BATCH)
        except Exception:  # noqa: BLE001 - closed under our feet
            return
        if not messages:
            continue
        client = client_ref()
        if client is None:
            return
        for m in messages:
            try:
                client._on_message(*m)
            except Exception as exc:  # noqa: BLE001 - never let one bad result stop delivery
                warnings.warn(f"zfarm: could not handle a message: {exc!r}", RuntimeWarning, stacklevel=1)
        del client


def _close_core(core: Any, receiver: threading.Thread, cluster: Optional[Cluster]) -> None:
    core.close()
    if receiver is not threading.current_thread():
        receiver.join(timeout=5)
    if cluster is not None:
        cluster.stop()
