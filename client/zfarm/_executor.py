"""A concurrent.futures.Executor on a zfarm cluster.

>>> with rc.executor() as ex:                      # doctest: +SKIP
...     list(ex.map(abs, [-1, -2]))
[1, 2]
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional

from ._errors import TimeoutError


class ZfarmExecutor(concurrent.futures.Executor):
    """Submits each call as a load-balanced task; futures are AsyncResults."""

    def __init__(self, view: Any):
        self.view = view
        self._futures: "set[concurrent.futures.Future]" = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Runs ``fn(*args, **kwargs)`` as one load-balanced task; returns its AsyncResult."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            fut = self.view.apply_async(fn, *args, **kwargs)
            self._futures.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: concurrent.futures.Future) -> None:
        with self._lock:
            self._futures.discard(fut)

    def map(self, fn: Callable, *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Like the builtin ``map``, as tasks of ``chunksize`` items each.

        The iterator raises ``concurrent.futures.TimeoutError`` if the
        results are not all there ``timeout`` seconds after this call.
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            ar = self.view.map(fn, *iterables, chunksize=chunksize, block=False)
            self._futures.add(ar)  # shutdown() waits for (or cancels) it too
        ar.add_done_callback(self._forget)
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:
            if deadline is not None and not ar.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"map did not finish within {timeout} s")
            yield from ar

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuses new work; waits for submitted work when ``wait`` is true."""
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            # As concurrent.futures does: what has not started is dropped,
            # what runs finishes (AsyncResult.cancel would interrupt it).
            for f in pending:
                f.abort()
        if wait:
            concurrent.futures.wait(pending)
