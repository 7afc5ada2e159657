"""AsyncResult: the handle every non-blocking call returns.

It is a :class:`concurrent.futures.Future` (so ``as_completed``, ``wait`` and
``asyncio.wrap_future`` work on it) and awaitable; like ipyparallel's it also
offers ``get``, ``wait``, ``ready``, ``engine_id`` and ``stdout``.

>>> ar = rc[:].apply(os.getpid)          # doctest: +SKIP
>>> ar.get(timeout=10)                   # doctest: +SKIP
[4117, 4118]
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import pickle
import sys
import threading
import time
import warnings
from datetime import datetime, timezone
from _thread import RLock
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from . import _core, _serialize
from ._errors import (
    FAILURE_TYPES,
    STATUS_ABORTED,
    STATUS_ENGINE_DIED,
    STATUS_IMPOSSIBLE,
    STATUS_LOST,
    STATUS_OK,
    STATUS_REJECTED,
    STATUS_REMOTE_ERROR,
    STATUS_TIMED_OUT,
    CompositeError,
    RemoteError,
    TaskAborted,
    TaskFailure,
    TimeoutError,
)

_MISSING = object()

# Output.status flags (common/protocol.hpp): the engine reached the task's
# limit for that stream and streams no more of it.
OUTPUT_STDOUT_CAPPED = 1
OUTPUT_STDERR_CAPPED = 2
STREAMS = ("stdout", "stderr")
_CAPPED_FLAG = (OUTPUT_STDOUT_CAPPED, OUTPUT_STDERR_CAPPED)  # by stream index

# fn(task_index, engine_id, stream, text), stream "stdout" or "stderr".
OutputCallback = Callable[[int, Optional[int], str, str], None]


class _Live:
    """What one running task has streamed so far."""

    __slots__ = ("engine_id", "parts", "nbytes", "flags")

    def __init__(self, engine_id: Optional[int]):
        self.engine_id = engine_id
        self.parts: List[List[str]] = [[], []]
        self.nbytes = [0, 0]  # bytes received, to tell a repeated chunk
        self.flags = 0

    def text(self, stream: int) -> str:
        parts = self.parts[stream]
        if len(parts) > 1:
            parts[:] = ["".join(parts)]
        return parts[0] if parts else ""


class _Outcome:
    """One task's end.  Its timing as the client core gives it: ``started``
    (seconds since the epoch, the engine's clock) and ``ran`` (seconds),
    None when the task did not run on an engine (or its engine or broker
    gives no timing); ``received`` (seconds since the epoch, this host's
    clock), None for an outcome made here (no message came)."""

    __slots__ = ("ok", "value", "engine_id", "stdout", "stderr", "started", "ran", "received")

    def __init__(self, ok: bool, value: Any, engine_id: Optional[int], stdout: str = "", stderr: str = "",
                 started: Optional[float] = None, ran: Optional[float] = None, received: Optional[float] = None):
        self.ok = ok
        self.value = value
        self.engine_id = engine_id
        self.stdout = stdout
        self.stderr = stderr
        self.started = started
        self.ran = ran
        self.received = received


# The pickled results an engine sends for the commonest values with no
# output (zfarm._worker sends exactly these bytes), and their values: a
# dictionary look-up instead of unpickling, for the result of every task
# called for its effect.  Equal bytes unpickle to equal values, whoever
# sent them.
_SMALL_RESULTS: Dict[bytes, Any] = {
    pickle.dumps(("ok", v, "", ""), protocol=_serialize.PROTOCOL): v for v in [None, True, False, *range(-8, 257)]
}


def decode_outcome(task_id: int, status: int, engine_id: int, text: str, frames: Sequence[Any],
                   started: Optional[float] = None, ran: Optional[float] = None,
                   received: Optional[float] = None) -> _Outcome:
    """Turns one Result message into a value or an exception (the timing as
    in :class:`_Outcome`)."""
    if status == STATUS_OK and len(frames) == 1 and type(frames[0]) is bytes:
        value = _SMALL_RESULTS.get(frames[0], _MISSING)
        if value is not _MISSING:
            return _Outcome(True, value, engine_id, "", "", started, ran, received)
    if status in (STATUS_OK, STATUS_REMOTE_ERROR) and frames:
        try:
            kind, value, out, err = pickle.loads(frames[0]) if len(frames) == 1 else _serialize.loads(frames)
        except Exception as exc:  # noqa: BLE001 - a result we cannot read is a failure, not a crash
            return _Outcome(False, TaskFailure(f"result of task {task_id} could not be read: {exc!r}",
                                               task_id, engine_id), engine_id, "", "", started, ran, received)
        if kind == "ok":
            return _Outcome(True, value, engine_id, out, err, started, ran, received)
        error = RemoteError(value.get("ename", "Exception"), value.get("evalue", ""),
                            value.get("traceback", ""), engine_id, task_id)
        return _Outcome(False, error, engine_id, out, err, started, ran, received)
    if status == STATUS_REMOTE_ERROR:  # the engine could not even pickle its answer
        return _Outcome(False, RemoteError("EngineError", text or "no details", "", engine_id, task_id), engine_id,
                        "", "", started, ran, received)
    cls = FAILURE_TYPES.get(status, TaskFailure)
    message = text or cls.__doc__ or "task failed"
    return _Outcome(False, cls(f"task {task_id}: {message}", task_id, engine_id if engine_id >= 0 else None),
                    engine_id if engine_id >= 0 else None, "", "", started, ran, received)


_ENDED = frozenset({CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED})
_CANCELLED = frozenset({CANCELLED, CANCELLED_AND_NOTIFIED})

# The one lock of every AsyncResult's state.  A lock per result (and the
# condition around it) was made per task and scanned by the garbage
# collector for as long as the task ran; a result's state is only touched
# briefly, under the GIL anyway, so sharing costs no parallelism.  Waiting
# is still per result: each has its own condition (on this lock), made when
# a thread first waits on it.
_LOCK = RLock()
_monotonic = time.monotonic
_wall_clock = time.time
# _completion of a single task that ended (index 0): shared, never changed.
_FIRST_ONLY = (0,)

# The client's receiver thread sets .defer to its Core's fire_later: a
# Latch of a call it ends is fired once it has let go of the GIL (see
# Latch in client/core.cpp).  Other threads fire at once.
_receiving = threading.local()


def _in_delivery() -> bool:
    """True on a thread that delivers results now (the receiver thread, or a
    thread reading the socket while it waits in get()): waiting there for
    another reply would stop the delivery of every result."""
    return getattr(_receiving, "defer", None) is not None


class _Condition(threading.Condition):
    """threading.Condition(_LOCK), lighter: the lock's own methods stand as
    class attributes (a bound built-in method is no descriptor, so
    ``cond.acquire`` is ``_LOCK.acquire``, and ``with cond`` calls the lock's
    ``__enter__`` straight, with no Python frame), nothing is stored per
    instance but the deque of waiters (the condition itself is made only
    when a thread waits)."""

    _lock = _LOCK
    acquire = _LOCK.acquire
    release = _LOCK.release
    __enter__ = _LOCK.__enter__
    __exit__ = _LOCK.__exit__
    _release_save = _LOCK._release_save  # type: ignore[attr-defined]
    _acquire_restore = _LOCK._acquire_restore  # type: ignore[attr-defined]
    _is_owned = _LOCK._is_owned  # type: ignore[attr-defined]

    def __init__(self) -> None:  # noqa: PLW0231 - see the class doc
        self._waiters: "collections.deque[Any]" = collections.deque()


class AsyncResult(concurrent.futures.Future):
    """The pending result of one call, made of one or more tasks.

    ``combine`` turns the list of per-task values (in task order, or in
    completion order when ``ordered`` is false) into the call's result.
    """

    # What most calls never use: class-wide defaults, replaced per instance
    # on first use (a call made one task at a time creates many of these).
    _progress: Optional[threading.Condition] = None
    _live: Optional[Dict[int, _Live]] = None  # task index -> output streamed so far
    _ended_at: Optional[float] = None  # time.monotonic() when the last task's outcome arrived
    _output_callbacks: Sequence[OutputCallback] = ()
    _on_ended: Sequence[Callable[[], None]] = ()  # see _when_ended
    _cancelling = False
    _submission_known = True  # False: a get_result, submitted elsewhere
    _submitted_wall_cache: Optional[float] = None  # see _submitted_wall

    # Task indexes in the order their outcomes came; a list from the first
    # outcome on (one object less per pending task).
    _completion: Sequence[int] = ()
    # The lock of this result's state (shared by all, see _LOCK), and the
    # Future's condition, made on first use (see _condition).
    _lock = _LOCK
    _condition_obj: Optional[_Condition] = None
    # What result() waits on, made by the first thread that waits.
    _latch: Optional[Any] = None

    def __init__(self, client: Any, n_tasks: int, combine: Optional[Callable[[List[Any]], Any]] = None,
                 single: bool = False, ordered: bool = True, flatten: bool = False, label: str = "tasks"):
        # (Positional arguments are allowed for the per-task call of apply:
        # keywords make CPython build a dict for __init__ on every call.)
        # Future.__init__, without its condition (see _condition) and its
        # lists of waiters and callbacks (see _waiters).
        self._state = PENDING
        self._result = None
        self._exception = None
        self._client = client
        self._n = n_tasks
        self._outcomes: List[Optional[_Outcome]] = [None] * n_tasks
        self._combine = combine
        self._single = single
        self._ordered = ordered
        self._flatten = flatten
        self._label = label
        self._one_value = single and n_tasks == 1 and not flatten  # apply: one task, one value
        self.task_ids: List[int] = []
        self._submitted_at = _monotonic()
        if n_tasks == 0:
            self._finish()

    # Future's list of concurrent.futures.wait() waiters and its list of
    # done callbacks, made on first use: most results have neither, and each
    # list is one more object per task for the garbage collector to scan.
    _waiter_list: Optional[List[Any]] = None
    _callback_list: Optional[List[Callable[[Any], None]]] = None

    @property
    def _waiters(self) -> List[Any]:
        waiters = self._waiter_list
        if waiters is None:
            waiters = self._waiter_list = []
        return waiters

    @property
    def _done_callbacks(self) -> List[Callable[[Any], None]]:
        callbacks = self._callback_list
        if callbacks is None:
            callbacks = self._callback_list = []
        return callbacks

    @property
    def _condition(self) -> _Condition:  # type: ignore[override]
        """The Future's condition: its lock is _LOCK; made when first asked
        for (by a thread about to wait in result() or exception(), mostly)."""
        cond = self._condition_obj
        if cond is None:
            with _LOCK:
                cond = self._condition_obj
                if cond is None:
                    cond = self._condition_obj = _Condition()
        return cond

    @property
    def _cond(self) -> threading.Condition:
        """Notified on each task's outcome and each piece of streamed output.

        It shares the Future's lock but not its notifications: Future.result()
        takes any notification on its own condition for the end.  Made on
        first use: most results are only ever waited for as a whole.
        """
        cond = self._progress
        if cond is None:
            with _LOCK:
                cond = self._progress
                if cond is None:
                    cond = self._progress = threading.Condition(_LOCK)
        return cond

    # -- fed by the client's receiver thread --------------------------------
    def _deliver(self, index: int, outcome: _Outcome) -> None:
        rest: Sequence[Tuple[int, str]] = ()
        # Acquired and released by hand: a with statement costs two method
        # look-ups.
        _LOCK.acquire()
        try:
            if self._outcomes[index] is not None:
                return  # exactly one outcome per task
            live = self._live.pop(index, None) if self._live else None
            if live is not None:
                rest = self._settle_output(outcome, live)
            self._outcomes[index] = outcome
            if self._completion:
                self._completion.append(index)  # type: ignore[attr-defined]
            else:
                self._completion = [index] if self._n > 1 else _FIRST_ONLY
            finished = len(self._completion) == self._n
            if finished:
                self._ended_at = _monotonic()
            callbacks = self._output_callbacks
            if self._progress is not None:
                self._progress.notify_all()
            if (finished and self._one_value and not callbacks and not self._on_ended and not self._cancelling
                    and self._state == PENDING and self._waiter_list is None and self._condition_obj is None
                    and self._latch is None):
                # One task, one value (apply), nothing else to run first, no
                # thread waiting: the call ends here (_end_locked, inline).
                if outcome.ok:
                    self._result = outcome.value
                else:
                    self._exception = outcome.value
                self._state = FINISHED
                ended = True
            elif finished and self._one_value and not callbacks and not self._on_ended and not self._cancelling:
                ended = self._end_locked(outcome.ok, outcome.value)
            elif (finished and self._combine is None and not self._single and not self._flatten and self._ordered
                  and not callbacks and not self._on_ended and not self._cancelling):
                # A list with one value per task (execute, apply, push, pull on
                # several engines): ended here when every task succeeded, as
                # _finish would, without its passes over the outcomes.
                ended = self._end_list_locked()
            else:
                ended = False
        finally:
            _LOCK.release()
        if ended:
            if self._callback_list:
                self._invoke_callbacks()
            return
        if callbacks:
            if live is None:  # nothing was streamed: the whole output is the rest
                rest = [(s, t) for s, t in ((0, outcome.stdout), (1, outcome.stderr)) if t]
            self._call_output(callbacks, index, outcome.engine_id, rest)
        if finished:
            if self._on_ended:  # complete now: nothing is added any more
                self._run_ended()
            self._finish()

    def _end_list_locked(self) -> bool:
        """Ends with the list of every task's value; False if a task failed
        (then _finish makes the error) or the result had ended already."""
        values = []
        for o in self._outcomes:
            if not o.ok:  # type: ignore[union-attr]
                return False
            values.append(o.value)  # type: ignore[union-attr]
        return self._end_locked(True, values)

    def _end(self, ok: bool, value: Any) -> bool:
        """Future.set_result / set_exception without the done callbacks (the
        caller runs them, outside the lock), and without raising when the
        future ended meanwhile (cancelled by Future.cancel): then False.
        Wakes waiters only if there are any."""
        with _LOCK:
            return self._end_locked(ok, value)

    def _end_locked(self, ok: bool, value: Any) -> bool:
        if self._state in _ENDED:
            return False
        if ok:
            self._result = value
        else:
            self._exception = value
        self._state = FINISHED
        waiters = self._waiter_list
        if waiters:
            for waiter in waiters:
                if ok:
                    waiter.add_result(self)
                else:
                    waiter.add_exception(self)
        cond = self._condition_obj
        if cond is not None and cond._waiters:
            cond.notify_all()
        latch = self._latch
        if latch is not None:
            defer = getattr(_receiving, "defer", None)
            if defer is not None:
                defer(latch)
            else:
                latch.fire()
        return True

    def _set(self, ok: bool, value: Any) -> None:
        if self._end(ok, value) and self._callback_list:
            self._invoke_callbacks()

    @staticmethod
    def _settle_output(outcome: _Outcome, live: _Live) -> List[Tuple[int, str]]:
        """The part of the final output not streamed, per stream.  A task
        that ended without output of its own (its engine died, it timed out)
        keeps what it streamed."""
        streamed = [live.text(0), live.text(1)]
        if not outcome.stdout and not outcome.stderr:
            outcome.stdout, outcome.stderr = streamed
            return []
        rest = []
        for stream, final in ((0, outcome.stdout), (1, outcome.stderr)):
            seen = streamed[stream]
            tail = final[len(seen):] if final.startswith(seen) else final
            if tail:
                rest.append((stream, tail))
        return rest

    def _stream(self, index: int, engine_id: Optional[int], chunks: Sequence[str], nbytes: Sequence[int],
                offsets: Sequence[int], flags: int) -> None:
        """An Output message for task ``index``: appends its text."""
        new = []
        with _LOCK:
            if self._outcomes[index] is not None:
                return  # late: the outcome carries the whole output
            if self._live is None:
                self._live = {}
            live = self._live.get(index)
            if live is None:
                live = self._live[index] = _Live(engine_id)
            for stream in (0, 1):
                text = chunks[stream]
                if not text or offsets[stream] < live.nbytes[stream]:
                    continue  # empty, or a repeat of what arrived already
                live.parts[stream].append(text)
                live.nbytes[stream] = offsets[stream] + nbytes[stream]
                new.append((stream, text))
            live.flags |= flags
            callbacks = self._output_callbacks
            if self._progress is not None:
                self._progress.notify_all()
        if callbacks and new:
            self._call_output(callbacks, index, engine_id, new)

    def _call_output(self, callbacks: Sequence[OutputCallback], index: int, engine_id: Optional[int],
                     pieces: Sequence[Tuple[int, str]]) -> None:
        for stream, text in pieces:
            for fn in callbacks:
                try:
                    fn(index, engine_id, STREAMS[stream], text)
                except Exception as exc:  # noqa: BLE001 - a user callback must not stop delivery
                    warnings.warn(f"zfarm: output callback failed: {exc!r}", RuntimeWarning, stacklevel=1)

    def _when_ended(self, fn: Callable[[], None]) -> None:
        """Calls ``fn()`` once every task has its outcome (unlike a done
        callback, not earlier on cancel()); at once if that is already so."""
        with _LOCK:
            if len(self._completion) < self._n:
                self._on_ended = [*self._on_ended, fn]
                return
        fn()

    def _run_ended(self) -> None:
        with _LOCK:
            fns, self._on_ended = self._on_ended, ()
        for fn in fns:
            try:
                fn()
            except Exception:  # noqa: BLE001 - clean-up must not stop delivery
                pass

    def _finish(self) -> None:
        if self._one_value and not self._cancelling:
            outcome = self._outcomes[0]
            if outcome is not None:
                self._set(outcome.ok, outcome.value)
            return
        errors = [o.value for o in self._outcomes if o is not None and not o.ok]
        if self._cancelling:
            # cancel() promised this ends cancelled, even if some task got
            # through before the interrupt reached it.
            aborted = [e for e in errors if isinstance(e, TaskAborted)]
            self._set(False, aborted[0] if aborted else TaskAborted(f"{self._label}: cancelled"))
            return
        try:
            if errors:
                self._set(False, errors[0] if len(errors) == 1 else CompositeError(errors))
                return
            order = range(self._n) if self._ordered else self._completion
            values = [self._outcomes[i].value for i in order]  # type: ignore[union-attr]
            if self._flatten:
                values = [item for chunk in values for item in chunk]
            if self._single:
                value = values[0]
            elif self._combine is not None:
                value = self._combine(values)
            else:
                value = values
        except BaseException as exc:  # noqa: BLE001 - combining (e.g. concatenating) may fail
            self._set(False, exc)
            return
        self._set(True, value)

    # -- control ---------------------------------------------------------------
    def _unfinished(self) -> List[int]:
        with _LOCK:
            return [t for t, o in zip(self.task_ids, self._outcomes) if o is None]

    def abort(self) -> None:
        """Drops this call's tasks that are still queued (they end TaskAborted).

        Tasks already running go on; see :meth:`cancel`.
        """
        ids = self._unfinished()
        if ids and self._client is not None:
            self._client.abort(ids)

    def cancel(self) -> bool:
        """Aborts queued tasks and interrupts running ones.

        Returns True if the call will end cancelled (it then raises
        TaskAborted), False if it had already ended.
        """
        with _LOCK:
            if self.done() or self._client is None:
                return False
            ids = [t for t, o in zip(self.task_ids, self._outcomes) if o is None]
            self._cancelling = True
        if ids:
            self._client.abort(ids)
            self._client._interrupt_tasks(ids)
        return True

    def outcomes(self, timeout: Optional[float] = None) -> List[Any]:
        """Per task, in task order: its value, or the exception it ended with.

        Waits up to ``timeout`` for every task to end.  Lets a caller see
        which tasks of a partly failed map succeeded.
        """
        if not self.wait(timeout):
            raise TimeoutError(f"{self._label}: not every task ended within {timeout} s")
        return [o.value for o in self._outcomes]  # type: ignore[union-attr]

    @property
    def errors(self) -> List[BaseException]:
        """The failures among the tasks ended so far."""
        return [o.value for o in self._outcomes if o is not None and not o.ok]

    # -- ipyparallel-style API ------------------------------------------------
    def get(self, timeout: Optional[float] = None) -> Any:
        """The result, waiting up to ``timeout`` seconds; raises remote errors."""
        if self._state == FINISHED:
            # Ended (for good: nothing leaves FINISHED), often before anyone
            # asks: no lock, no wait.
            if self._exception is not None:
                try:
                    raise self._exception
                finally:
                    self = None  # noqa: PLW0642 - no reference cycle through the traceback, as in Future
            return self._result
        try:
            return self.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise TimeoutError(f"{self._label}: result not ready after {timeout} s") from None

    def result(self, timeout: Optional[float] = None) -> Any:
        """Future.result: the value, or raises the exception (waits up to
        ``timeout`` seconds; concurrent.futures.TimeoutError after that)."""
        if self._state != FINISHED:
            deadline = None if timeout is None else _monotonic() + timeout
            # First this thread reads the socket itself while it waits, if
            # no other thread does (Client._serve): the reply wakes it
            # directly, and it needs no latch (it ends the call itself).
            if self._state not in _ENDED and getattr(_receiving, "defer", None) is None:  # _in_delivery()
                serve = getattr(self._client, "_serve", None)
                if serve is not None:
                    serve(self, deadline)
            # Otherwise (or for the time left) a Latch, not the Future's
            # condition: waited on without the GIL and fired by the
            # receiver only once it has released the GIL, so the result
            # wakes this thread once.
            if self._state not in _ENDED:
                with _LOCK:
                    latch = None
                    if self._state not in _ENDED:
                        latch = self._latch
                        if latch is None:
                            latch = self._latch = _core.Latch()
                if latch is not None:
                    latch.wait(None if deadline is None else max(0.0, deadline - _monotonic()))
            if self._state in _CANCELLED:
                raise concurrent.futures.CancelledError()
            if self._state != FINISHED:
                raise concurrent.futures.TimeoutError()
        if self._exception is not None:
            try:
                raise self._exception
            finally:
                self = None  # noqa: PLW0642 - no reference cycle through the traceback, as in Future
        return self._result

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until every task has ended; True if they all did in time."""
        concurrent.futures.wait([self], timeout=timeout)
        return self.done()

    def done(self) -> bool:
        """True when the call has ended (or was cancelled)."""
        # One attribute read needs no lock (and making the condition just
        # for this would be wasted).
        return self._state in _ENDED

    def cancelled(self) -> bool:
        return self._state in _CANCELLED

    def ready(self) -> bool:
        """True when every task of this call has ended."""
        return self.done()

    def successful(self) -> bool:
        """True when done and no task failed."""
        return self.done() and not self.cancelled() and self.exception(0) is None

    @property
    def progress(self) -> int:
        """How many tasks of this call have ended."""
        return len(self._completion)

    def __len__(self) -> int:
        return self._n

    def _field(self, name: str) -> Any:
        values = [getattr(o, name) if o is not None else None for o in self._outcomes]
        return values[0] if self._single else values

    def _output(self, stream: int) -> Any:
        with _LOCK:
            live = self._live or {}
            values = []
            for i, o in enumerate(self._outcomes):
                if o is not None:
                    values.append(o.stdout if stream == 0 else o.stderr)
                else:
                    entry = live.get(i)
                    values.append(entry.text(stream) if entry is not None else "")
        return values[0] if self._single else values

    @property
    def engine_id(self) -> Any:
        """The engine each task ran on (one id for a single task)."""
        return self._field("engine_id")

    @property
    def stdout(self) -> Any:
        """What each task printed to stdout (one string for a single task).

        While a task runs this is what it has printed so far, streamed from
        its engine about every 100 ms; once it ends, its whole output as the
        result brought it (so nothing appears twice).
        """
        return self._output(0)

    @property
    def stderr(self) -> Any:
        """What each task printed to stderr (as :attr:`stdout`)."""
        return self._output(1)

    def on_output(self, fn: OutputCallback) -> None:
        """Calls ``fn(task_index, engine_id, stream, text)`` with each piece
        of output as it arrives (``stream`` is ``"stdout"`` or ``"stderr"``).

        Pieces come while the tasks run, and when a task ends, once more
        with the rest of its output that was not streamed.  Registered right
        after submitting, the pieces of a task join up to exactly its final
        ``stdout``/``stderr``; pieces that arrived before registering are not
        repeated.  ``fn`` runs on the thread that delivers results (the
        client's receiver thread, or a thread waiting in ``get()``): keep it
        short (append to a queue, say).

        >>> ar = rc[:].apply_async(work)                             # doctest: +SKIP
        >>> ar.on_output(lambda i, e, s, t: print(f"[{s}:{e}] {t}", end=""))  # doctest: +SKIP
        """
        with _LOCK:
            self._output_callbacks = [*self._output_callbacks, fn]

    @property
    def elapsed(self) -> float:
        """Seconds since submission; once every task has ended, :attr:`wall_time`."""
        ended = self._ended_at
        return (time.monotonic() if ended is None else ended) - self._submitted_at

    @property
    def wall_time(self) -> Optional[float]:
        """Seconds from submission until the last task's outcome arrived here
        (None while a task has not ended)."""
        ended = self._ended_at
        return None if ended is None else ended - self._submitted_at

    # -- per-task timing (ipyparallel's names) ----------------------------------
    # Datetimes are timezone-aware (UTC).  submitted and received are read on
    # this host, started and completed on the task's engine: engines on other
    # hosts compare only as well as the clocks agree.
    def _per_task(self, values: List[Any]) -> Any:
        return values[0] if self._single else values

    def _submitted_wall(self) -> Optional[float]:
        """The submission on the wall clock: the monotonic reading made then
        (elapsed needs it anyway), moved by the two clocks' offset when first
        asked, and kept, so that it reads the same every time.  No clock read
        per call; a wall-clock step in between shifts it by the step."""
        if not self._submission_known:
            return None
        wall = self._submitted_wall_cache
        if wall is None:
            offset = _wall_clock() - _monotonic()  # wall first: any error makes it earlier, never later
            wall = self._submitted_wall_cache = self._submitted_at + offset
        return wall

    @property
    def submitted(self) -> Any:
        """When the call was submitted (a datetime; a list of them, one per
        task, for a call of several tasks).  None for :meth:`Client.get_result`
        results: the submission happened elsewhere."""
        when = _datetime(self._submitted_wall())
        return self._per_task([when] * self._n)

    @property
    def started(self) -> Any:
        """When each task started on its engine (a datetime, or a list); None
        for a task that has not ended, or never ran (aborted, rejected, lost,
        timed out while queued...)."""
        return self._per_task([_datetime(_moment(o, 0)) for o in self._outcomes])

    @property
    def completed(self) -> Any:
        """When each task finished on its engine (as :attr:`started`)."""
        return self._per_task([_datetime(_moment(o, 1)) for o in self._outcomes])

    @property
    def received(self) -> Any:
        """When each task's result arrived here (a datetime, or a list); None
        while it has not, and for an outcome this client made itself (it was
        closed, or the broker restarted)."""
        return self._per_task([_datetime(_moment(o, 2)) for o in self._outcomes])

    @property
    def serial_time(self) -> float:
        """Seconds the engines spent running this call's tasks, summed over the
        tasks that ran and ended so far; ``serial_time / wall_time`` is the
        speed-up over running them one after another."""
        total = 0.0
        for o in self._outcomes:
            if o is not None and o.ran is not None:
                total += o.ran
        return total

    @property
    def metadata(self) -> Any:
        """Per task, a dict of ``task_id``, ``engine_id``, ``status`` (``"ok"``,
        ``"error"``, ``"aborted"``, ... or None while pending), ``submitted``,
        ``started``, ``completed`` and ``received`` (one dict for a single
        task, else a list)."""
        submitted = _datetime(self._submitted_wall())
        ids = self.task_ids
        rows = []
        for i, o in enumerate(self._outcomes):
            rows.append({
                "task_id": ids[i] if i < len(ids) else None,
                "engine_id": o.engine_id if o is not None else None,
                "status": _status_name(o),
                "submitted": submitted,
                "started": _datetime(_moment(o, 0)),
                "completed": _datetime(_moment(o, 1)),
                "received": _datetime(_moment(o, 2)),
            })
        return self._per_task(rows)

    def wait_interactive(self, interval: float = 0.1, timeout: Optional[float] = None,
                         output: bool = True) -> bool:
        """Waits with a progress bar (tqdm; notebook-aware).  True if all ended.

        With ``output`` the tasks' output is shown as it arrives, each line
        prefixed like ``[stdout:0]`` (the engine id).
        """
        from tqdm.auto import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=self._n, desc=self._label, unit="task") as bar:
            follow = OutputFollower(self, lambda text, stream: bar.write(text, file=_std(stream))) if output else None
            while True:
                with self._cond:
                    done = len(self._completion)
                    if done < self._n:
                        self._cond.wait(interval)
                        done = len(self._completion)
                if follow is not None:
                    follow.show(ended=True)
                bar.update(done - bar.n)
                if done >= self._n:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.done()

    def __iter__(self) -> Iterator[Any]:
        """Yields results as they become available (item by item for maps)."""
        if self._single:
            yield self.get()
            return
        for i in range(self._n):
            with self._cond:
                while not self._available(i):
                    self._cond.wait(1.0)
                index = i if self._ordered else self._completion[i]
                outcome = self._outcomes[index]
            assert outcome is not None
            if not outcome.ok:
                raise outcome.value
            if self._flatten:
                yield from outcome.value
            else:
                yield outcome.value

    def _available(self, i: int) -> bool:
        # The i-th result to yield: by task order, or by completion order.
        if self._ordered:
            return self._outcomes[i] is not None
        return len(self._completion) > i

    def __await__(self):
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        state = "done" if self.done() else f"{self.progress}/{self._n}"
        return f"<AsyncResult {self._label}: {state}>"


def _moment(outcome: Optional[_Outcome], which: int) -> Optional[float]:
    """Seconds since the epoch at which the task started (0), completed (1)
    or its result arrived here (2); None if unknown."""
    if outcome is None:
        return None
    if which == 2:
        return outcome.received
    started = outcome.started
    if started is None or which == 0:
        return started
    return started + outcome.ran


def _datetime(seconds: Optional[float]) -> Optional[datetime]:
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):  # a clock far off; the core already refuses such timing
        return None


# metadata's "status" of a failed task, by its exception type.
_STATUS_NAMES = {FAILURE_TYPES[status]: name for status, name in (
    (STATUS_ENGINE_DIED, "engine_died"), (STATUS_ABORTED, "aborted"), (STATUS_REJECTED, "rejected"),
    (STATUS_TIMED_OUT, "timed_out"), (STATUS_LOST, "lost"), (STATUS_IMPOSSIBLE, "impossible"))}


def _status_name(outcome: Optional[_Outcome]) -> Optional[str]:
    if outcome is None:
        return None
    if outcome.ok:
        return "ok"
    if isinstance(outcome.value, RemoteError):
        return "error"
    return _STATUS_NAMES.get(type(outcome.value), "failed")


def _std(stream: int) -> Any:
    return sys.stdout if stream == 0 else sys.stderr


def prefixed(label: str, text: str) -> str:
    """``text`` with ``label`` before each line (no final newline).

    >>> print(prefixed("[stdout:0]", "a\\nb\\n"))
    [stdout:0] a
    [stdout:0] b
    """
    return "\n".join(f"{label} {line}" for line in text.rstrip("\n").split("\n"))


class OutputFollower:
    """Shows the output of an AsyncResult's tasks as it arrives.

    Each :meth:`show` writes, through ``write(text, stream)`` (stream 0
    stdout, 1 stderr), the new whole lines each running task has streamed,
    prefixed ``[stdout:ENGINE]``; with ``ended`` also the rest of the output
    of the tasks that ended since the last call.  :meth:`unshown` gives what
    of a task's final output is still to show, so nothing is shown twice.
    A call looks only at tasks with streamed output and tasks that just
    ended, so following a map of many tasks stays cheap.  Call it from one
    thread (the one waiting).
    """

    def __init__(self, ar: AsyncResult, write: Callable[[str, int], None]):
        self._ar = ar
        self._write = write
        self._shown: Dict[Tuple[int, int], int] = {}  # (task index, stream) -> characters shown
        self._ended_seen = 0  # entries of ar._completion already shown to the end
        self._capped: Set[Tuple[int, int]] = set()  # (task index, stream) whose limit was announced

    def show(self, ended: bool = False) -> None:
        ar = self._ar
        with _LOCK:
            running = [(i, e.engine_id, e.flags, e.text(0), e.text(1)) for i, e in (ar._live or {}).items()]
            just_ended = ar._completion[self._ended_seen:] if ended else []
            self._ended_seen += len(just_ended)
        for index, engine, flags, *texts in running:
            for stream, text in enumerate(texts):
                done = self._shown.get((index, stream), 0)
                end = text.rfind("\n") + 1
                if end > done:
                    self._write(prefixed(_label(stream, engine, index), text[done:end]), stream)
                    self._shown[(index, stream)] = end
                if flags & _CAPPED_FLAG[stream] and (index, stream) not in self._capped:
                    # The engine keeps no more of this stream: say so now,
                    # not only in the note at the end of the final output.
                    self._capped.add((index, stream))
                    self._write(prefixed(_label(stream, engine, index),
                                         f"[zfarm: output limit reached; further {STREAMS[stream]} "
                                         "of this task is dropped]\n"), stream)
        for index in just_ended:
            outcome = ar._outcomes[index]
            for stream in (0, 1):
                rest = self.unshown(index, stream)
                if rest:
                    self._write(prefixed(_label(stream, outcome.engine_id, index), rest), stream)
                self._shown.pop((index, stream), None)
                self._capped.discard((index, stream))

    def unshown(self, index: int, stream: int) -> str:
        """What of task ``index``'s final output has not been shown yet."""
        outcome = self._ar._outcomes[index]
        if outcome is None:
            return ""
        final = outcome.stdout if stream == 0 else outcome.stderr
        return final[self._shown.get((index, stream), 0):]


def _label(stream: int, engine_id: Optional[int], index: int) -> str:
    return f"[{STREAMS[stream]}:{engine_id if engine_id is not None else f'?{index}'}]"
