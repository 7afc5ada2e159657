"""Exceptions: every task ends in a value or in one of these."""
from __future__ import annotations

import concurrent.futures
from typing import List, Optional


class ZfarmError(Exception):
    """Base class of zfarm's own errors."""


class TimeoutError(ZfarmError, concurrent.futures.TimeoutError):  # noqa: A001
    """A wait ran out of time (the task itself may still finish)."""


class NoEnginesError(ZfarmError):
    """No engine is registered to run the work."""


class TaskFailure(ZfarmError):
    """A task that ended without running to completion (a named failure)."""

    def __init__(self, message: str, task_id: Optional[int] = None, engine_id: Optional[int] = None):
        super().__init__(message)
        self.task_id = task_id
        self.engine_id = engine_id


class EngineDiedError(TaskFailure):
    """The engine running (or queued to run) the task was lost."""


class TaskAborted(TaskFailure):
    """The task was dropped from a queue before it ran."""


class TaskRejected(TaskFailure):
    """The broker refused the task (unknown engine, duplicate id, ...)."""


class TaskTimedOut(TaskFailure):
    """The task ran past its time limit and was stopped."""


class TaskLost(TaskFailure):
    """The broker no longer knows the task or its result: it restarted while the task was pending (it may
    or may not have run), or the result was freed (the session expired, or a store bound dropped it)."""


class ImpossibleDependency(TaskFailure):
    """A dependency (after/follow/engines) failed or can never be met."""


class RemoteError(ZfarmError):
    """An exception raised by the task on an engine.

    ``ename``, ``evalue`` and ``traceback`` describe the remote exception;
    ``engine_id`` says where it ran.
    """

    def __init__(self, ename: str, evalue: str, traceback: str, engine_id: Optional[int] = None,
                 task_id: Optional[int] = None):
        super().__init__(f"{ename}: {evalue}")
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_id = engine_id
        self.task_id = task_id

    def __str__(self) -> str:
        where = f"[engine {self.engine_id}] " if self.engine_id is not None else ""
        return f"{where}{self.ename}: {self.evalue}\n{self.traceback}".rstrip()

    def __reduce__(self):
        return (RemoteError, (self.ename, self.evalue, self.traceback, self.engine_id, self.task_id))


class CompositeError(ZfarmError):
    """Several tasks of one call failed; ``errors`` holds each failure."""

    def __init__(self, errors: List[BaseException]):
        self.errors = list(errors)
        first = self.errors[0] if self.errors else None
        super().__init__(f"{len(self.errors)} tasks failed; first: {first!r}")

    def __str__(self) -> str:
        parts = [f"{len(self.errors)} tasks failed:"]
        parts.extend(str(e) for e in self.errors)
        return "\n".join(parts)

    def raise_exception(self, index: int = 0) -> None:
        """Raise the ``index``-th failure on its own."""
        raise self.errors[index]


# Result statuses of the wire protocol (common/protocol.hpp).
STATUS_OK = 0
STATUS_REMOTE_ERROR = 1
STATUS_ENGINE_DIED = 2
STATUS_ABORTED = 3
STATUS_REJECTED = 4
STATUS_TIMED_OUT = 5
STATUS_LOST = 6
STATUS_IMPOSSIBLE = 7

FAILURE_TYPES = {
    STATUS_ENGINE_DIED: EngineDiedError,
    STATUS_ABORTED: TaskAborted,
    STATUS_REJECTED: TaskRejected,
    STATUS_TIMED_OUT: TaskTimedOut,
    STATUS_LOST: TaskLost,
    STATUS_IMPOSSIBLE: ImpossibleDependency,
}
