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
import concurrent.futures
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence

from . import _serialize
from ._errors import (
    FAILURE_TYPES,
    STATUS_OK,
    STATUS_REMOTE_ERROR,
    CompositeError,
    RemoteError,
    TaskAborted,
    TaskFailure,
    TimeoutError,
)

_MISSING = object()


class _Outcome:
    __slots__ = ("ok", "value", "engine_id", "stdout", "stderr")

    def __init__(self, ok: bool, value: Any, engine_id: Optional[int], stdout: str = "", stderr: str = ""):
        self.ok = ok
        self.value = value
        self.engine_id = engine_id
        self.stdout = stdout
        self.stderr = stderr


def decode_outcome(task_id: int, status: int, engine_id: int, text: str, frames: Sequence[Any]) -> _Outcome:
    """Turns one Result message into a value or an exception."""
    if status in (STATUS_OK, STATUS_REMOTE_ERROR) and frames:
        try:
            kind, value, out, err = _serialize.loads(frames)
        except Exception as exc:  # noqa: BLE001 - a result we cannot read is a failure, not a crash
            return _Outcome(False, TaskFailure(f"result of task {task_id} could not be read: {exc!r}",
                                               task_id, engine_id), engine_id)
        if kind == "ok":
            return _Outcome(True, value, engine_id, out, err)
        error = RemoteError(value.get("ename", "Exception"), value.get("evalue", ""),
                            value.get("traceback", ""), engine_id, task_id)
        return _Outcome(False, error, engine_id, out, err)
    if status == STATUS_REMOTE_ERROR:  # the engine could not even pickle its answer
        return _Outcome(False, RemoteError("EngineError", text or "no details", "", engine_id, task_id), engine_id)
    cls = FAILURE_TYPES.get(status, TaskFailure)
    message = text or cls.__doc__ or "task failed"
    return _Outcome(False, cls(f"task {task_id}: {message}", task_id, engine_id if engine_id >= 0 else None),
                    engine_id if engine_id >= 0 else None)


class AsyncResult(concurrent.futures.Future):
    """The pending result of one call, made of one or more tasks.

    ``combine`` turns the list of per-task values (in task order, or in
    completion order when ``ordered`` is false) into the call's result.
    """

    def __init__(self, client: Any, n_tasks: int, *, combine: Optional[Callable[[List[Any]], Any]] = None,
                 single: bool = False, ordered: bool = True, flatten: bool = False, label: str = "tasks"):
        super().__init__()
        self._client = client
        self._n = n_tasks
        self._outcomes: List[Optional[_Outcome]] = [None] * n_tasks
        self._completion: List[int] = []
        self._combine = combine
        self._single = single
        self._ordered = ordered
        self._flatten = flatten
        self._label = label
        # One task: the Future's own condition (no second lock to make).  With
        # more, partial progress is notified, and Future.result() takes any
        # notification on its condition for the end: a condition of our own.
        self._cond = self._condition if n_tasks == 1 else threading.Condition()
        self.task_ids: List[int] = []
        self.submitted = time.monotonic()
        self._on_ended: List[Callable[[], None]] = []  # see _when_ended
        self._cancelling = False
        if n_tasks == 0:
            self._finish()

    # -- fed by the client's receiver thread --------------------------------
    def _deliver(self, index: int, outcome: _Outcome) -> None:
        with self._cond:
            if self._outcomes[index] is not None:
                return  # exactly one outcome per task
            self._outcomes[index] = outcome
            self._completion.append(index)
            finished = len(self._completion) == self._n
            if not finished:
                self._cond.notify_all()  # the last one notifies through set_result
        if finished:
            if self._on_ended:  # complete now: nothing is added any more
                self._run_ended()
            self._finish()

    def _when_ended(self, fn: Callable[[], None]) -> None:
        """Calls ``fn()`` once every task has its outcome (unlike a done
        callback, not earlier on cancel()); at once if that is already so."""
        with self._cond:
            if len(self._completion) < self._n:
                self._on_ended.append(fn)
                return
        fn()

    def _run_ended(self) -> None:
        with self._cond:
            fns, self._on_ended = self._on_ended, []
        for fn in fns:
            try:
                fn()
            except Exception:  # noqa: BLE001 - clean-up must not stop delivery
                pass

    def _finish(self) -> None:
        if self._single and self._n == 1 and not self._flatten and not self._cancelling:
            # One task, one value (apply): the common case, without lists.
            outcome = self._outcomes[0]
            if outcome is not None and not self.cancelled():
                if outcome.ok:
                    self.set_result(outcome.value)
                else:
                    self.set_exception(outcome.value)
            return
        errors = [o.value for o in self._outcomes if o is not None and not o.ok]
        if self._cancelling:
            # cancel() promised this ends cancelled, even if some task got
            # through before the interrupt reached it.
            aborted = [e for e in errors if isinstance(e, TaskAborted)]
            self.set_exception(aborted[0] if aborted else TaskAborted(f"{self._label}: cancelled"))
            return
        try:
            if errors:
                exc: BaseException = errors[0] if len(errors) == 1 else CompositeError(errors)
                if not self.cancelled():
                    self.set_exception(exc)
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
            if not self.cancelled():
                self.set_exception(exc)
            return
        if not self.cancelled():
            self.set_result(value)

    # -- control ---------------------------------------------------------------
    def _unfinished(self) -> List[int]:
        with self._cond:
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
        with self._cond:
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
        try:
            return self.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise TimeoutError(f"{self._label}: result not ready after {timeout} s") from None

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until every task has ended; True if they all did in time."""
        concurrent.futures.wait([self], timeout=timeout)
        return self.done()

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

    @property
    def engine_id(self) -> Any:
        """The engine each task ran on (one id for a single task)."""
        return self._field("engine_id")

    @property
    def stdout(self) -> Any:
        """What each task printed to stdout (one string for a single task)."""
        return self._field("stdout")

    @property
    def stderr(self) -> Any:
        """What each task printed to stderr."""
        return self._field("stderr")

    @property
    def elapsed(self) -> float:
        """Seconds since submission."""
        return time.monotonic() - self.submitted

    def wait_interactive(self, interval: float = 0.1, timeout: Optional[float] = None) -> bool:
        """Waits with a progress bar (tqdm; notebook-aware).  True if all ended."""
        from tqdm.auto import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=self._n, desc=self._label, unit="task") as bar:
            while True:
                with self._cond:
                    done = len(self._completion)
                    if done < self._n:
                        self._cond.wait(interval)
                        done = len(self._completion)
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
