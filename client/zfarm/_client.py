"""Client: the connection to a zfarm cluster.

>>> rc = zfarm.Client()                  # doctest: +SKIP
>>> rc.ids                               # doctest: +SKIP
[0, 1]
>>> rc[:].apply_sync(lambda: 42)         # doctest: +SKIP
[42, 42]

A client belongs to a *session* (``rc.session``).  The broker keeps each
result until the session acknowledges it, so a new client opened with the
same session collects what an earlier one missed::

    rc = zfarm.Client(cf); ids = rc.load_balanced_view().map(f, xs).task_ids
    rc.detach()                                    # leave the tasks running
    rc2 = zfarm.Client(cf, session=rc.session)
    rc2.get_result(ids).get()                      # doctest: +SKIP
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import secrets
import signal
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from . import _core, _shm
from ._asyncresult import _ENDED, _SMALL_RESULTS, AsyncResult, _Outcome, _receiving, decode_outcome
from ._cluster import Cluster, read_connection_file
from ._errors import STATUS_ABORTED, STATUS_LOST, STATUS_OK, NoEnginesError, TimeoutError, ZfarmError

# Message types of the wire protocol (common/protocol.hpp).
MSG_HEARTBEAT = 3
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
MSG_OUTPUT = 18
LOAD_BALANCED = -1
EVENT_JOINED = 0
EVENT_LEFT = 1

# The receiver thread wakes at least this often to notice close() and to
# send heartbeats and acknowledgements on time.
RECV_TIMEOUT_MS = 50
RECV_BATCH = 8192
# Heartbeat (or, until the broker has welcomed us, Hello) about this often;
# more often if the broker's own heartbeat interval (from Welcome) is shorter.
HEARTBEAT_S = 1.0
# get_result() needs a broker that keeps results; one that has not answered
# Hello with Welcome within this time does not.
WELCOME_WAIT_S = 5.0
# The id of a Hello sent again (after a broker restart or a forgotten
# session), so its Welcome is told from the answers to Heartbeats (id 0).
REHELLO_ID = 1
# detach() waits at most this long for the broker to confirm it has every
# task sent so far.
DETACH_SYNC_S = 5.0
# Results are acknowledged in batches: when this many are waiting, or when
# the oldest has waited this long.
ACK_BATCH = 256
ACK_DELAY_S = 0.05
# Results that arrived for tasks this client is not waiting for (resent to a
# reconnected session, or answers to Fetch after a local give-up) are kept for
# get_result(); at most this many, oldest dropped first.
MAX_UNCLAIMED = 100_000
# Ids of recently delivered results, so a second copy (a resend racing a
# Fetch) is recognised and not kept as unclaimed.
RECENT_IDS = 100_000
# Ids per Abort/Interrupt/Ack/Fetch message (the protocol's list limit).
MAX_IDS_PER_MESSAGE = 65536

_NOT_SMALL = object()
_MAIN_THREAD = threading.main_thread().ident
_SIGINT = int(signal.SIGINT)

TaskRef = Union[int, AsyncResult]
EventCallback = Callable[[str, int, str], None]


def task_ids_of(jobs: Union[None, TaskRef, Iterable[TaskRef]]) -> List[int]:
    """Task ids named by an AsyncResult, an id, or a list of them.

    >>> task_ids_of([3, 4])
    [3, 4]
    """
    if jobs is None:
        return []
    if isinstance(jobs, AsyncResult):
        return list(jobs.task_ids)
    if isinstance(jobs, int):
        return [jobs]
    ids: List[int] = []
    for j in jobs:
        ids.extend(task_ids_of(j))
    return ids


class Client:
    """A connection to a zfarm cluster.

    ``Client(connection_file)`` connects to a running cluster (the file its
    broker wrote); ``Client(profile="name")`` to the one ``zfarm cluster
    start --profile name`` started.  With no argument it uses $ZFARM_CONNECTION_FILE if set;
    otherwise it starts a local cluster of ``n`` engines (default: one per
    core) and stops it again on :meth:`close` or at exit.

    ``session`` names the session to join (default: a new random one);
    ``on_event(kind, engine_id, text)`` is called from the thread that
    delivers results (the receiver thread, or a thread waiting in ``get()``)
    when an engine joins (``"joined"``) or leaves (``"left"``), and with
    ``("restarted", -1, incarnation)`` when the broker restarted.
    """

    def __init__(self, connection_file: Optional[str] = None, *, n: Optional[int] = None,
                 timeout: float = 30.0, cluster: Optional[Cluster] = None, session: Optional[str] = None,
                 on_event: Optional[EventCallback] = None, profile: Optional[str] = None):
        self._cluster: Optional[Cluster] = None
        if profile is not None and connection_file is None:
            # A cluster started with `zfarm cluster start --profile NAME`.
            from ._profiles import connection_file as profile_connection_file

            connection_file = profile_connection_file(profile)
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
        self.session: str = session if session is not None else secrets.token_hex(8)
        # Task ids are unique per client: 31 random bits, then a counter.
        self._prefix = secrets.randbits(31) << 32
        self._shm_policy = _shm.SendPolicy(local=cluster is not None)
        self._next = 1
        self._lock = threading.Lock()
        self._pending: Dict[int, Tuple[AsyncResult, int]] = {}
        # Ids awaited through get_result (maybe another client's tasks):
        # never aborted on this client's behalf by abort() or close().
        self._fetched: Set[int] = set()
        self._status_waiters: Dict[int, concurrent.futures.Future] = {}
        self._unclaimed: "collections.OrderedDict[int, _Outcome]" = collections.OrderedDict()
        # Two generations of ids: a set add per result instead of an ordered
        # dict's insert and pop; between RECENT_IDS and twice that are known.
        self._recent: Set[int] = set()
        self._recent_old: Set[int] = set()
        self._to_ack: List[int] = []
        self._ack_since = 0.0
        self._last_beat = 0.0
        self.incarnation: Optional[str] = None  # the broker's, from its last Welcome
        self.heartbeat_ms: Optional[int] = None
        self._engine_ids: Optional[Set[int]] = None  # from Welcome and Events
        self._welcomed = threading.Event()
        self._rehello = False  # a Hello after a restart or a forgotten session awaits its Welcome
        # Set with _welcomed: the broker keeps results until acknowledged.  A
        # plain attribute, read for every batch of results (Event.is_set()
        # is a Python call).
        self._ack_results = False
        self._event_callbacks: List[EventCallback] = [on_event] if on_event else []
        self.errors: List[str] = []  # Error messages the broker sent us
        self._closed = False
        self._hello()
        self._last_beat = time.monotonic()
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
            first = self._prefix | self._next
            self._next += k
        return first

    def _submit(self, messages: List[Tuple[List[int], List[Any], Optional[Dict[str, Any]]]], ar: AsyncResult,
                failed: Optional[Sequence[Tuple[int, str]]] = None) -> AsyncResult:
        """Sends tasks for ``ar``.

        Each message is (targets, frames, opts).  A message for k explicit
        targets makes k tasks, one per engine, sharing the frames.  A message
        with frames None is not sent: its task ends at once with the status
        and text given in ``failed`` (same order), e.g. a dependency that
        already failed.
        """
        if self._closed:
            raise ZfarmError("the client is closed")
        if len(messages) == 1 and failed is None:
            targets, frames, opts = messages[0]
            if frames is not None and len(frames) == 1:
                # One pickle and no out-of-band buffer (nothing for shared
                # memory): the common small call, without the general loop.
                return self._submit_one(targets, frames, opts, ar)
        # Large buffers go through shared memory when the engines are local;
        # the files live until every task of this call has ended.
        messages, shm_files = _shm.export_messages(messages, lambda: self._shm_policy.enabled(self))
        if shm_files:
            ar._when_ended(lambda: _shm.release(shm_files))
        total = sum(1 if t == [LOAD_BALANCED] else len(t) for t, _, _ in messages)
        first = self._take_ids(total)
        first_index = len(ar.task_ids)
        wire = []
        local = []
        failures = iter(failed or ())
        index = 0
        with self._lock:
            for targets, frames, opts in messages:
                k = 1 if targets == [LOAD_BALANCED] else len(targets)
                task_id = first + index
                for j in range(k):
                    ar.task_ids.append(task_id + j)
                    if frames is not None:
                        self._pending[task_id + j] = (ar, index + j)
                if frames is None:
                    status, text = next(failures)
                    local.extend((task_id + j, index + j, status, text) for j in range(k))
                elif opts:
                    wire.append((MSG_SUBMIT, task_id, targets, 0, "", frames, opts))
                else:
                    wire.append((MSG_SUBMIT, task_id, targets, 0, "", frames))
                index += k
        try:
            if len(wire) == 1:
                self._core.send(*wire[0])
            elif wire:
                self._core.send_many(wire)
        except BaseException:
            # Nothing was sent (the core checks every message first, e.g.
            # against the broker's frame size limit): forget the tasks.
            with self._lock:
                for task_id in ar.task_ids[first_index:]:
                    self._pending.pop(task_id, None)
            del ar.task_ids[first_index:]
            if shm_files:
                _shm.release(shm_files)
            raise
        for task_id, i, status, text in local:
            ar._deliver(i, decode_outcome(task_id, status, -1, text, []))
        return ar

    def _submit_one(self, targets: List[int], frames: List[Any], opts: Optional[Dict[str, Any]],
                    ar: AsyncResult) -> AsyncResult:
        """One message of one frame (no shared memory to consider): the
        common small call, without the general loop of :meth:`_submit`."""
        if self._closed:
            raise ZfarmError("the client is closed")
        balanced = len(targets) == 1 and targets[0] == LOAD_BALANCED
        k = 1 if balanced else len(targets)
        # acquire/release rather than a with statement, and no loop for one
        # task: this runs once per apply_async.
        lock = self._lock
        lock.acquire()
        try:
            task_id = self._prefix | self._next
            self._next += k
            if k == 1:
                ar.task_ids.append(task_id)
                self._pending[task_id] = (ar, 0)
            else:
                for j in range(k):
                    ar.task_ids.append(task_id + j)
                    self._pending[task_id + j] = (ar, j)
        finally:
            lock.release()
        try:
            if opts:
                self._core.send(MSG_SUBMIT, task_id, targets, 0, "", frames, opts)
            elif balanced:
                self._core.submit(task_id, frames)
            else:
                self._core.submit(task_id, frames, targets)
        except BaseException:
            # Not sent (e.g. over the broker's frame size limit): forget it.
            with self._lock:
                for j in range(k):
                    self._pending.pop(task_id + j, None)
            del ar.task_ids[-k:]
            raise
        return ar

    def _send_ids(self, mtype: int, ids: Sequence[int], targets: Sequence[int] = ()) -> None:
        ids = list(ids)
        if not ids and targets:
            self._core.send(mtype, 0, list(targets), 0, "", [])
            return
        for a in range(0, len(ids), MAX_IDS_PER_MESSAGE):
            chunk = ids[a:a + MAX_IDS_PER_MESSAGE]
            self._core.send(mtype, 0, list(targets) if a == 0 else [], 0, "", [], {"ids": chunk})

    # -- incoming messages (receiver thread) -------------------------------------
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
            # A Result handed here alone, without timing: the core's Results
            # are tuples of their own shape, for _on_results.
            self._on_results([(MSG_RESULT, mid, status, aux, text, frames, None, None, None)])
        elif mtype == MSG_OUTPUT:
            self._on_output(mid, status, aux, frames, targets or [0, 0])
        elif mtype == MSG_WELCOME:
            self._on_welcome(text, targets or [], status, mid, aux)
        elif mtype == MSG_EVENT:
            self._on_event(status, aux, text)
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

    def _on_results(self, batch: Sequence[Tuple[Any, ...]]) -> None:
        """Result messages (type, id, status, aux, text, frames, started,
        run time, received; see _core.Core.recv): the
        bookkeeping of the whole batch under one lock, then each delivery."""
        mine = []
        with self._lock:
            ack = self._ack_results
            pending, fetched, recent, unclaimed = self._pending, self._fetched, self._recent, self._unclaimed
            for m in batch:
                mid = m[1]
                if ack:
                    if not self._to_ack:
                        self._ack_since = time.monotonic()
                    self._to_ack.append(mid)
                entry = pending.pop(mid, None)
                if fetched:
                    fetched.discard(mid)
                if entry is None:
                    if mid in recent or mid in self._recent_old or mid in unclaimed:
                        _shm.discard(m[5])
                        continue  # a second copy (a resend racing a Fetch)
                    unclaimed[mid] = decode_outcome(mid, m[2], m[3], m[4], m[5], m[6], m[7], m[8])
                    while len(unclaimed) > MAX_UNCLAIMED:
                        unclaimed.popitem(last=False)
                    continue
                recent.add(mid)
                mine.append((entry, m))
            if len(recent) >= RECENT_IDS:
                self._recent_old, self._recent = recent, set()
        small = _SMALL_RESULTS
        for (ar, index), m in mine:
            try:
                frames = m[5]
                # decode_outcome's first case, inline: the result of most
                # tasks called for their effect.
                if m[2] == STATUS_OK and len(frames) == 1 and type(frames[0]) is bytes:
                    value = small.get(frames[0], _NOT_SMALL)
                    if value is not _NOT_SMALL:
                        ar._deliver(index, _Outcome(True, value, m[3], "", "", m[6], m[7], m[8]))
                        continue
                ar._deliver(index, decode_outcome(m[1], m[2], m[3], m[4], frames, m[6], m[7], m[8]))
            except Exception as exc:  # noqa: BLE001 - never let one bad result stop delivery
                warnings.warn(f"zfarm: could not deliver a result: {exc!r}", RuntimeWarning, stacklevel=1)

    def _on_output(self, mid: int, flags: int, engine_id: int, frames: List[Any], offsets: List[int]) -> None:
        # Best effort: a chunk for a task no longer awaited here is dropped.
        with self._lock:
            entry = self._pending.get(mid)
        if entry is None:
            return
        ar, index = entry
        chunks = [str(memoryview(f), "utf-8", "replace") for f in frames]
        ar._stream(index, engine_id, chunks, [len(f) for f in frames], offsets, flags)

    def _on_welcome(self, incarnation: str, engine_ids: List[int], heartbeat_ms: int, mid: int = 0,
                    aux: int = 0) -> None:
        restarted = self.incarnation is not None and incarnation != self.incarnation
        was_welcomed = self._welcomed.is_set()
        self.incarnation = incarnation
        self.heartbeat_ms = heartbeat_ms
        self._engine_ids = set(engine_ids)
        self._ack_results = True
        self._welcomed.set()
        if mid == REHELLO_ID:
            self._rehello = False  # the answer to our Hello again: the session is back
        if not restarted:
            # aux 1 on a Heartbeat's Welcome: the broker kept nothing of our
            # session; it forgot it after --session-timeout of silence (we
            # were cut off that long).  Results we wait for will not come.
            if aux == 1 and mid != REHELLO_ID and was_welcomed and not self._rehello:
                self._join_again("the broker forgot this client's session (it heard nothing from it for longer "
                                 "than its --session-timeout)")
            return
        # A new broker knows nothing of what we submitted: join it again and
        # end every task still outstanding (it may or may not have run).
        self._join_again("the broker restarted")
        self._notify("restarted", -1, incarnation)

    def _join_again(self, why: str) -> None:
        """Hello again and end every task still awaited with TaskLost (receiver thread)."""
        self._rehello = True  # until its Welcome, Heartbeat answers still say "no session"
        self._hello(REHELLO_ID)
        with self._lock:
            pending, self._pending = self._pending, {}
            self._fetched.clear()
            self._to_ack.clear()
        for task_id, (ar, index) in pending.items():
            ar._deliver(index, decode_outcome(task_id, STATUS_LOST, -1, why, []))

    def _on_event(self, kind: int, engine_id: int, text: str) -> None:
        ids = self._engine_ids
        if ids is not None:
            ids = set(ids)
            if kind == EVENT_JOINED:
                ids.add(engine_id)
            elif kind == EVENT_LEFT:
                ids.discard(engine_id)
            self._engine_ids = ids
        self._notify({EVENT_JOINED: "joined", EVENT_LEFT: "left"}.get(kind, f"event {kind}"), engine_id, text)

    def _notify(self, kind: str, engine_id: int, text: str) -> None:
        for callback in list(self._event_callbacks):
            try:
                callback(kind, engine_id, text)
            except Exception as exc:  # noqa: BLE001 - a user callback must not stop delivery
                warnings.warn(f"zfarm: event callback failed: {exc!r}", RuntimeWarning, stacklevel=1)

    def _hello(self, mid: int = 0) -> None:
        # The revision tells the broker what this client takes: from 4 on,
        # Results in Batches (the core unpacks them).
        opts = {"session": self.session, "revision": _core.PROTOCOL_REVISION}
        self._core.send(MSG_HELLO, mid, [], 0, "", [], opts)

    def _housekeeping(self) -> None:
        """Heartbeats and batched acknowledgements (receiver thread)."""
        now = time.monotonic()
        interval = min(HEARTBEAT_S, self.heartbeat_ms / 1000) if self.heartbeat_ms else HEARTBEAT_S
        if now - self._last_beat >= interval:
            self._last_beat = now
            # Until the broker has answered with Welcome it may not know
            # sessions at all: Hello is harmless to any broker.
            if self._welcomed.is_set():
                self._core.send(MSG_HEARTBEAT, 0, [], 0, "", [])
            else:
                self._hello()
        # Looked at without the lock first (the usual answer is "not yet");
        # a list that close() emptied meanwhile sends nothing.
        to_ack = self._to_ack
        if not to_ack or (len(to_ack) < ACK_BATCH and now - self._ack_since < ACK_DELAY_S):
            return
        with self._lock:
            ids, self._to_ack = self._to_ack, []
        self._send_ids(MSG_ACK, ids)

    # -- sessions ---------------------------------------------------------------------
    def get_result(self, jobs: Union[int, Sequence[int], AsyncResult]) -> AsyncResult:
        """An AsyncResult for tasks by id, wherever they were submitted.

        Results this client already holds (for instance resent to this
        session after a reconnect) come at once; for the others the broker
        is asked (Fetch): a stored result is sent again, a pending task's
        when it ends, and an unknown id ends in TaskRejected.  One id gives
        a single value, a list gives a list (one entry per task: a map task
        gives its chunk).
        """
        if self._closed:
            raise ZfarmError("the client is closed")
        single = isinstance(jobs, int)
        ids = task_ids_of(jobs)
        ar = AsyncResult(self, len(ids), single=single, label="get_result")
        ar._submission_known = False  # submitted elsewhere, at a time not known here
        ready: List[Tuple[int, _Outcome]] = []
        fetch: List[int] = []
        with self._lock:
            for i, task_id in enumerate(ids):
                ar.task_ids.append(task_id)
                outcome = self._unclaimed.pop(task_id, None)
                if outcome is not None:
                    ready.append((i, outcome))
                elif task_id in self._pending:
                    # Already awaited here: share its outcome when it comes.
                    other, index = self._pending[task_id]
                    other.add_done_callback(_forward(ar, i, other, index))
                else:
                    self._pending[task_id] = (ar, i)
                    self._fetched.add(task_id)
                    fetch.append(task_id)
        for i, outcome in ready:
            ar._deliver(i, outcome)
        if fetch:
            if not self._welcomed.wait(WELCOME_WAIT_S):
                with self._lock:
                    for task_id in fetch:
                        self._pending.pop(task_id, None)
                        self._fetched.discard(task_id)
                raise ZfarmError("this broker does not keep results (it never answered Hello with Welcome)")
            self._send_ids(MSG_FETCH, fetch)
        return ar

    @property
    def unclaimed(self) -> List[int]:
        """Ids of results received for tasks this client did not submit."""
        with self._lock:
            return list(self._unclaimed)

    def on_event(self, callback: EventCallback) -> None:
        """Calls ``callback(kind, engine_id, text)`` on engine and broker events."""
        self._event_callbacks.append(callback)

    # -- control ------------------------------------------------------------------------
    def abort(self, jobs: Union[None, TaskRef, Iterable[TaskRef]] = None) -> None:
        """Drops queued tasks (default: every task this client waits for).

        Each task still queued ends with TaskAborted; running ones go on.
        Without ``jobs``, results awaited through :meth:`get_result` are
        left alone (they may be another client's tasks).
        """
        if jobs is None:
            with self._lock:
                ids = [i for i in self._pending if i not in self._fetched]
        else:
            ids = task_ids_of(jobs)
        if ids:
            self._send_ids(MSG_ABORT, ids)

    def interrupt(self, targets: Union[None, int, Sequence[int]] = None) -> None:
        """Raises KeyboardInterrupt in the task running on each engine in ``targets``
        (default: all); that task ends with TaskAborted and the engine lives on."""
        if targets is None:
            targets = self.ids
        elif isinstance(targets, int):
            targets = [targets]
        if targets:
            self._core.send(MSG_INTERRUPT, 0, list(targets), 0, "", [])

    def _interrupt_tasks(self, ids: Sequence[int]) -> None:
        if ids:
            self._send_ids(MSG_INTERRUPT, ids)

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
        """Ids of the engines registered now, ascending.

        Kept up to date from the broker's Welcome and Event messages, so
        reading it costs no round trip (older brokers: a status request).
        """
        ids = self._engine_ids
        if ids is not None:
            return sorted(ids)
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

    def load_balanced_view(self, targets: Optional[Sequence[int]] = None, **flags: Any):
        """A LoadBalancedView: tasks go to whichever engine (of ``targets``) is free.

        ``flags`` are as for :meth:`LoadBalancedView.set_flags`.
        """
        from ._view import LoadBalancedView

        return LoadBalancedView(self, targets, **flags)

    def executor(self, **kwargs: Any):
        """A concurrent.futures.Executor running on this cluster's engines."""
        from ._executor import ZfarmExecutor

        return ZfarmExecutor(self.load_balanced_view(**kwargs))

    def activate(self, targets: Union[str, int, Sequence[int]] = "all", suffix: str = "") -> None:
        """Binds the IPython magics (%px, %%px, %autopx, %pxresult) to these
        engines; ``suffix`` names a second set (``%px2`` ...) for other engines."""
        from ._magics import activate

        activate(self, targets, suffix)

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

    def _serve(self, ar: AsyncResult, deadline: Optional[float]) -> None:
        """Reads and handles incoming messages on this thread until ``ar``
        has ended or ``deadline`` (time.monotonic()) has passed, if no
        other thread does meanwhile (AsyncResult.result): the reply then
        wakes this thread straight away instead of the receiver thread,
        which would wake this one.  Returns at once if the socket is not
        to be had; the caller then waits for ``ar`` as before."""
        core = self._core
        if self._closed:
            return
        # Python runs signal handlers on the main thread between any two
        # bytecodes: Ctrl-C's KeyboardInterrupt in the middle of handling a
        # batch would lose its results.  So SIGINT is held back while this
        # thread has the socket and handled once it has given it back.
        guard = _hold_sigint() if threading.get_ident() == _MAIN_THREAD else None
        claimed = False
        try:
            claimed = core.claim()
            if not claimed:
                return
            # Latches of results ended here (other threads waiting) are
            # fired once this thread has let go of the GIL, as on the
            # receiver thread.
            _receiving.defer = core.fire_later
            while ar._state not in _ENDED and (guard is None or guard.held is None):
                if deadline is None:
                    wait_ms = RECV_TIMEOUT_MS
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    wait_ms = min(RECV_TIMEOUT_MS, int(left * 1000) + 1)
                messages = core.recv_claimed(wait_ms, RECV_BATCH)
                if messages:
                    _dispatch(self, messages)
                elif core.closed:
                    return
        finally:
            if claimed:
                _receiving.defer = None
                core.release()
            if guard is not None:
                guard.let_go()

    def shutdown(self) -> None:
        """Stops the whole cluster (broker and engines), then closes."""
        if not self._closed:
            self._core.send(MSG_SHUTDOWN, 0, [], 0, "", [])
        self.close()

    def close(self, abort: bool = True) -> None:
        """Closes the connection; stops the cluster if this client started it.

        With ``abort`` (the default) the broker drops this client's tasks
        that are still queued.  Either way every AsyncResult still waiting
        here ends (TaskAborted).  ``close(abort=False)`` -- or
        :meth:`detach` -- leaves the tasks to run: their results wait in
        the broker for ``Client(..., session=rc.session)``.
        """
        if self._closed:
            return
        if not abort and self._welcomed.is_set():
            # One round trip, so the broker has every Submit from this socket
            # (bound to the session) before a new client can rebind it.
            try:
                self.queue_status(timeout=DETACH_SYNC_S)
            except Exception:  # noqa: BLE001 - best effort; closing must not fail
                pass
        with self._lock:
            ids = [i for i in self._pending if i not in self._fetched]
            to_ack, self._to_ack = self._to_ack, []
        try:
            if to_ack:
                self._send_ids(MSG_ACK, to_ack)
            if abort and ids and self._welcomed.is_set():
                self._send_ids(MSG_ABORT, ids)
        except Exception:  # noqa: BLE001 - closing must not fail
            pass
        self._closed = True
        self._finalizer()  # sends what is queued, then closes the socket
        # Nothing is lost silently: what never came back ends as aborted.
        with self._lock:
            pending, self._pending = self._pending, {}
            waiters, self._status_waiters = self._status_waiters, {}
        why = "the client was closed" if abort else (
            f"the client detached; the result stays with session {self.session!r}")
        for task_id, (ar, index) in pending.items():
            ar._deliver(index, decode_outcome(task_id, STATUS_ABORTED, -1, why, []))
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(ZfarmError("the client was closed"))

    def detach(self) -> None:
        """Closes without aborting anything: ``close(abort=False)``."""
        self.close(abort=False)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<zfarm.Client {self.connection_info['client']} session={self.session}>"


def _forward(target: AsyncResult, i: int, source: AsyncResult, index: int) -> Callable[[Any], None]:
    def done(_: Any) -> None:
        outcome = source._outcomes[index]
        if outcome is not None:
            target._deliver(i, outcome)

    return done


def _receive_loop(client_ref: "weakref.ref[Client]", core: Any) -> None:
    # Calls this thread ends wake their waiters from core.recv(), without
    # the GIL (see AsyncResult.result); the latches of a last batch are
    # fired on the way out.
    _receiving.defer = core.fire_later
    try:
        _receive_batches(client_ref, core)
    finally:
        core.fire_kept()


def _receive_batches(client_ref: "weakref.ref[Client]", core: Any) -> None:
    # Holds only a weak reference, so an unused Client can be collected.
    while True:
        try:
            messages = core.recv(RECV_TIMEOUT_MS, RECV_BATCH)
        except Exception:  # noqa: BLE001 - closed under our feet
            return
        # A closed core receives nothing (at once): look only then, as
        # `closed` is a pybind11 property, a call that costs as much as
        # handling a small result.
        if not messages and core.closed:
            return
        client = client_ref()
        if client is None:
            return
        _dispatch(client, messages)
        try:
            client._housekeeping()
        except Exception:  # noqa: BLE001 - the socket was closed meanwhile
            pass
        del client


def _dispatch(client: Client, messages: List[Tuple[Any, ...]]) -> None:
    """Handles one batch from Core.recv or Core.recv_claimed, in order."""
    if len(messages) == 1 and messages[0][0] == MSG_RESULT:
        _handle_results(client, messages)  # the common batch of a waiting caller
        return
    results = []  # a run of Results, handled together (in order with the rest)
    for m in messages:
        if m[0] == MSG_RESULT:
            results.append(m)
            continue
        if results:
            _handle_results(client, results)
            results = []
        try:
            client._on_message(*m)
        except Exception as exc:  # noqa: BLE001 - never let one bad message stop delivery
            warnings.warn(f"zfarm: could not handle a message: {exc!r}", RuntimeWarning, stacklevel=1)
    if results:
        _handle_results(client, results)


class _SigintGuard:
    """SIGINT's Python handler once a get() on the main thread has read the
    socket (see Client._serve): calls the handler it replaced, unless it is
    holding the signal back; then it notes it for let_go().  Installed once
    and kept (setting a handler is a system call, too slow for every get());
    a handler set later by someone else is wrapped again on the next get()."""

    __slots__ = ("inner", "holding", "held")

    def __init__(self, inner: Callable[[int, Any], Any]):
        self.inner = inner
        self.holding = False
        self.held: Any = None  # the frame of a signal held back, or None

    def __call__(self, signum: int, frame: Any) -> Any:
        if self.holding:
            self.held = frame
            return None
        return self.inner(signum, frame)

    def let_go(self) -> None:
        """Stops holding; runs the replaced handler for a signal held back."""
        self.holding = False
        frame, self.held = self.held, None
        if frame is not None:
            self.inner(signal.SIGINT, frame)


_sigint_guard: Optional[_SigintGuard] = None
try:
    # The C function: signal.getsignal maps the handler to an enum member
    # first, which for a Python handler raises and catches a ValueError (a
    # third of a round trip's client instructions).
    from _signal import getsignal as _getsignal
except ImportError:  # pragma: no cover - another Python implementation
    _getsignal = signal.getsignal


def _hold_sigint() -> Optional[_SigintGuard]:
    """The guard, holding SIGINT from now on (main thread only); None when
    SIGINT's handler is not a Python function (ignored, the default, or set
    outside Python): then no KeyboardInterrupt can come."""
    global _sigint_guard
    current = _getsignal(_SIGINT)
    guard = _sigint_guard
    if guard is None or current is not guard:
        if not callable(current):
            return None
        guard = _sigint_guard = _SigintGuard(current)
        signal.signal(signal.SIGINT, guard)
    guard.holding = True
    return guard


def _handle_results(client: Client, results: List[Tuple[Any, ...]]) -> None:
    try:
        client._on_results(results)
    except Exception as exc:  # noqa: BLE001 - never let one bad batch stop delivery
        warnings.warn(f"zfarm: could not handle results: {exc!r}", RuntimeWarning, stacklevel=1)


def _close_core(core: Any, receiver: threading.Thread, cluster: Optional[Cluster]) -> None:
    core.close()
    if receiver is not threading.current_thread():
        receiver.join(timeout=5)
    if cluster is not None:
        cluster.stop()
