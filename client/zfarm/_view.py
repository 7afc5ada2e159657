"""Views: the multiengine interface (DirectView) and the task interface
(LoadBalancedView).

>>> dv = rc[:]                                   # doctest: +SKIP
>>> dv.execute("import math").get()              # doctest: +SKIP
>>> dv["a"] = 5; dv["a"]                         # doctest: +SKIP
[5, 5]
>>> lv = rc.load_balanced_view()                 # doctest: +SKIP
>>> lv.map(lambda x: x * x, range(10)).get()     # doctest: +SKIP
[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import math
import pickle
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _serialize, _shm
from ._asyncresult import AsyncResult, _in_delivery, _Outcome
from ._client import LOAD_BALANCED, Client
from ._errors import STATUS_IMPOSSIBLE

# A load-balanced map with no chunksize cuts its input into about this many
# chunks per engine: enough to even out uneven tasks, few enough that the
# per-task cost does not dominate small items.
CHUNKS_PER_ENGINE = 8


def partition(seq: Sequence[Any], n: int) -> List[Any]:
    """Cuts ``seq`` into ``n`` contiguous blocks whose sizes differ by at most one.

    Slicing keeps the type: a numpy array gives views (no copy), a range
    gives ranges.

    >>> partition(list(range(5)), 2)
    [[0, 1, 2], [3, 4]]
    """
    q, r = divmod(len(seq), n)
    parts, start = [], 0
    for i in range(n):
        stop = start + q + (1 if i < r else 0)
        parts.append(seq[start:stop])
        start = stop
    return parts


def concatenate(parts: List[Any]) -> Any:
    """Joins blocks made by :func:`partition` back into one sequence.

    >>> concatenate([[0, 1], [2]])
    [0, 1, 2]
    """
    if not parts:
        return []
    kinds = {type(p) for p in parts}
    if len(kinds) == 1:
        kind = kinds.pop()
        if kind.__module__ == "numpy" and kind.__name__ == "ndarray":
            import numpy

            return numpy.concatenate(parts)
        if kind is str:
            return "".join(parts)
        if kind is tuple:
            return tuple(x for p in parts for x in p)
    return [x for p in parts for x in p]


def _from_probe(client: Client, outcomes: List[Any]) -> AsyncResult:
    """A finished gather made from the first step's answers (values or errors)."""
    ar = AsyncResult(client, len(outcomes), combine=concatenate, label="gather")
    for i, o in enumerate(outcomes):
        if o.ok:
            value = o.value[1] if o.value[0] == "value" else o.value[3]
            o = _Outcome(True, value, o.engine_id, o.stdout, o.stderr, o.started, o.ran, o.received)
        ar._deliver(i, o)
    return ar


def _as_sequence(seq: Iterable[Any]) -> Sequence[Any]:
    if hasattr(seq, "__len__") and hasattr(seq, "__getitem__"):
        return seq  # type: ignore[return-value]
    return list(seq)


# Slices of these pickle compactly and iterate as their items (a range slice
# is a few bytes, a numpy slice travels as one out-of-band buffer).
_SLICE_AS_IS = (range, list, tuple, str, bytes)


def map_op(fn: bytes, seqs: Sequence[Sequence[Any]], a: int, b: int) -> tuple:
    """The engine operation mapping ``fn`` over items ``a:b`` of ``seqs``.

    One sequence goes as its slice ("map1": the engine calls ``fn(item)``),
    not as a list of 1-tuples: for 100,000 small ints this cut the CPU of
    pickling, unpickling and calling by about 3.7x (a chunk of 6,250 ints,
    3.2 -> 0.86 ms, in one process).  Several are zipped ("map":
    ``fn(*items)``).
    """
    if len(seqs) == 1:
        s = seqs[0]
        chunk = s[a:b]
        if not isinstance(s, _SLICE_AS_IS) and type(s).__name__ != "ndarray":
            chunk = list(chunk)  # an unknown sequence type need not pickle, its items do
        return ("map1", fn, chunk)
    return ("map", fn, list(zip(*[s[a:b] for s in seqs])))


class _View:
    def __init__(self, client: Client, block: bool = False):
        self.client = client
        self.block = block

    def _finish(self, ar: AsyncResult, block: Optional[bool]) -> Any:
        return ar.get() if (self.block if block is None else block) else ar

    # -- decorators and waiting (see _decorators.py) ---------------------------------
    def remote(self, block: Optional[bool] = None) -> Callable[[Callable], Any]:
        """Decorator: calling the function runs it on this view."""
        from ._decorators import RemoteFunction

        return lambda f: RemoteFunction(self, f, block)

    def parallel(self, block: Optional[bool] = None) -> Callable[[Callable], Any]:
        """Decorator: the function runs on blocks of its sequence arguments,
        in parallel, and the returned sequences are joined; ``.map`` runs it
        per item."""
        from ._decorators import ParallelFunction

        return lambda f: ParallelFunction(self, f, block)

    def wait(self, jobs: Optional[Iterable[AsyncResult]] = None, timeout: Optional[float] = None) -> bool:
        """Waits for ``jobs`` (default: everything this client has outstanding).
        True if all ended."""
        return self.client.wait(jobs, timeout)


class DirectView(_View):
    """Work on chosen engines, in order per engine (the multiengine interface).

    Calls return an :class:`AsyncResult` (or the value, with ``block=True``
    or the ``*_sync`` variants).  With one integer target results are single
    values; otherwise lists with one entry per engine.
    """

    def __init__(self, client: Client, targets: Union[int, Sequence[int]], block: bool = False):
        super().__init__(client, block)
        self.targets = targets
        self._single = isinstance(targets, int)
        self._ids: List[int] = [targets] if isinstance(targets, int) else list(targets)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"<DirectView {self.targets}>"

    def _all(self, op: tuple, label: str, block: Optional[bool], combine: Optional[Callable] = None) -> Any:
        return self._send_all(_serialize.dumps(op), label, block, combine)

    def _send_all(self, frames: List[Any], label: str, block: Optional[bool],
                  combine: Optional[Callable] = None) -> Any:
        """One message for every engine of the view: the same frames each."""
        # AsyncResult(client, n, combine=..., single=..., label=...), positionally
        # (keywords cost a dict per call).
        ar = AsyncResult(self.client, len(self._ids), combine, self._single, True, False, label)
        if len(frames) == 1:
            self.client._submit_one(self._ids, frames, None, ar)  # nothing for shared memory
        else:
            self.client._submit([(self._ids, frames, None)], ar)
        if block or (block is None and self.block):
            return ar.get()
        return ar

    def _each(self, ops: List[tuple], label: str, block: Optional[bool], combine: Optional[Callable] = None,
              flatten: bool = False) -> Any:
        # One different task per engine (scatter, map).
        ar = AsyncResult(self.client, len(self._ids), combine=combine, flatten=flatten, label=label)
        self.client._submit([([t], _serialize.dumps(op), None) for t, op in zip(self._ids, ops)], ar)
        return self._finish(ar, block)

    def sync_imports(self, local: bool = True, quiet: bool = False):
        """Context manager: the imports written in the ``with`` block also
        run on these engines (``local=False``: only there).

        >>> with dv.sync_imports():                      # doctest: +SKIP
        ...     import numpy
        importing numpy on engine(s)
        """
        from ._decorators import sync_imports

        return sync_imports(self, local, quiet)

    def activate(self, suffix: str = "") -> None:
        """Binds the IPython magics (%px, ...) to this view's engines."""
        from ._magics import activate

        activate(self.client, list(self._ids), suffix)

    # -- code and functions ------------------------------------------------------
    def execute(self, code: str, block: Optional[bool] = None) -> Any:
        """Runs ``code`` in each engine's namespace.

        Engines keep the compiled code of recent sources (up to 65,536
        characters each), so running the same code again skips compiling
        it (docs/multiengine.rst).
        """
        if type(code) is str:  # plain: pickled as is, without dumps()'s check
            return self._send_all([pickle.dumps(("execute", code), protocol=_serialize.PROTOCOL)], "execute", block)
        return self._all(("execute", code), "execute", block)

    # The payload as a load-balanced apply makes it (dumps_apply: a call
    # without arguments of a function pickled by reference reuses its pickle).
    def apply(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        """Calls ``f(*args, **kwargs)`` on every engine (honours ``self.block``)."""
        return self._send_all(_serialize.dumps_apply(f, args, kwargs), "apply", None)

    def apply_async(self, f: Callable, *args: Any, **kwargs: Any) -> AsyncResult:
        return self._send_all(_serialize.dumps_apply(f, args, kwargs), "apply", False)

    def apply_sync(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        return self._send_all(_serialize.dumps_apply(f, args, kwargs), "apply", True)

    def map(self, f: Callable, *seqs: Iterable[Any], block: Optional[bool] = None) -> Any:
        """Maps ``f`` over ``seqs``: each engine takes one contiguous block."""
        seqs = tuple(_as_sequence(s) for s in seqs)
        n = min(len(s) for s in seqs)
        fn = _serialize.dumps_function(f)
        # The blocks partition() makes, as bounds: partition(range(n)) gives ranges.
        ops = [map_op(fn, seqs, r.start, r.stop) for r in partition(range(n), len(self._ids))]
        return self._each(ops, "map", block, flatten=True)

    def map_sync(self, f: Callable, *seqs: Iterable[Any]) -> List[Any]:
        return self.map(f, *seqs, block=True)

    # -- data ------------------------------------------------------------------------
    def push(self, namespace: Dict[str, Any], block: Optional[bool] = None) -> Any:
        """Sets these names on every engine."""
        return self._all(("push", dict(namespace)), "push", block)

    def pull(self, names: Union[str, Sequence[str]], block: Optional[bool] = None) -> Any:
        """Gets the value of ``names`` from every engine."""
        return self._all(("pull", names if isinstance(names, str) else list(names)), "pull", block)

    def __setitem__(self, name: str, value: Any) -> None:
        self.push({name: value}, block=True)

    def __getitem__(self, name: str) -> Any:
        return self.pull(name, block=True)

    def scatter(self, name: str, seq: Iterable[Any], block: Optional[bool] = None) -> Any:
        """Splits ``seq`` into contiguous blocks, one per engine, as ``name``.

        numpy arrays travel as views of the original (no copy in Python).
        """
        parts = partition(_as_sequence(seq), len(self._ids))
        return self._each([("push", {name: p}) for p in parts], "scatter", block, combine=lambda _: None)

    def gather(self, name: str, block: Optional[bool] = None) -> Any:
        """Joins the blocks of ``name`` from every engine, in engine order.

        numpy arrays from engines on this host are written by the engines
        into one shared-memory file that becomes the result (no copy on the
        client); see :meth:`_gather_in_place`.
        """
        ar = self._gather_in_place(name)
        if ar is None:
            ar = AsyncResult(self.client, len(self._ids), combine=concatenate, label="gather")
            self.client._submit([(self._ids, _serialize.dumps(("pull", name)), None)], ar)
        return self._finish(ar, block)

    def _gather_in_place(self, name: str) -> Optional[AsyncResult]:
        """The gather of numpy arrays through one shared-memory file, or None
        when it does not apply (then the caller pulls and concatenates).

        Asks every engine first for its part's dtype and shape (small parts
        come back whole), and waits for that answer: only when this client
        has nothing else outstanding, so the wait is one short round trip
        and no later call of this client can run between the two steps.
        Then each engine writes its part at its offset of one file.
        """
        client = self.client
        if _in_delivery():
            return None  # called from a done callback: waiting here would stop every result
        if client.outstanding or not client._shm_policy.enabled(client):
            return None
        probe = AsyncResult(client, len(self._ids), label="gather")
        client._submit([(self._ids, _serialize.dumps(("apply", _shm.gather_probe, (name,), {})), None)], probe)
        probe.wait()
        outcomes = list(probe._outcomes)
        if not all(o.ok for o in outcomes):
            return _from_probe(client, outcomes)  # an engine failed: the call fails the same way
        answers = [o.value for o in outcomes]
        if any(a[0] != "array" for a in answers) or len({(a[1], a[2][1:]) for a in answers}) != 1:
            if all(a[0] == "value" or a[3] is not None for a in answers):
                return _from_probe(client, outcomes)  # every part is here already
            return None  # mixed types, dtypes or shapes with some large part: pull and concatenate
        dtype, rest = answers[0][1], answers[0][2][1:]
        rows = [a[2][0] for a in answers]
        row_bytes = dtype.itemsize * math.prod(rest)
        total = sum(rows) * row_bytes
        if total < _shm.SHM_MIN:
            return _from_probe(client, outcomes)
        try:
            target = _shm.GatherFile(total)
        except OSError:
            return None  # no room in /dev/shm: through the sockets
        shape = (sum(rows),) + tuple(rest)
        offsets = list(itertools.accumulate([0] + rows[:-1]))

        def combine(parts: List[Any]) -> Any:
            whole = target.array(dtype, shape)
            if all(p[0] == "written" for p in parts):
                return whole
            # Some engine sent its part instead (it changed meanwhile, or
            # the file was not reachable): join the pieces as usual.
            pieces = [whole[o:o + r] if p[0] == "written" else p[1] for p, o, r in zip(parts, offsets, rows)]
            return concatenate(pieces)

        ar = AsyncResult(client, len(self._ids), combine=combine, label="gather")
        ar._when_ended(target.close)  # unlinked before the result is set, whatever the outcome
        ops = [("apply", _shm.gather_part, (name, target.name, o * row_bytes, dtype, (r,) + tuple(rest)), {})
               for o, r in zip(offsets, rows)]
        try:
            client._submit([([t], _serialize.dumps(op), None) for t, op in zip(self._ids, ops)], ar)
        except BaseException:
            target.close()
            raise
        return ar

    def reset(self, block: Optional[bool] = None) -> Any:
        """Clears each engine's namespace."""
        return self._all(("reset",), "reset", block)

    def keys(self, block: Optional[bool] = None) -> Any:
        """Names defined in each engine's namespace."""
        return self._all(("keys",), "keys", block)



# imap keeps about this many tasks in flight per engine by default: enough
# that no engine idles between results, few enough that a huge or endless
# input is not read ahead.
IMAP_TASKS_PER_ENGINE = 4

FLAGS = ("retries", "timeout", "after", "follow", "targets", "priority", "block")

Dependency = Union[None, int, AsyncResult, Iterable[Union[int, AsyncResult]]]


def _dependency_ids(dep: Dependency) -> Tuple[List[int], List[Tuple[int, Any]]]:
    """Splits a dependency into (unfinished task ids, finished (id, outcome)).

    Finished tasks are those of an AsyncResult whose outcome is known here.
    """
    if dep is None:
        return [], []
    if isinstance(dep, int):
        return [dep], []
    if isinstance(dep, AsyncResult):
        pending, finished = [], []
        with dep._lock:
            for task_id, outcome in zip(dep.task_ids, dep._outcomes):
                if outcome is None:
                    pending.append(task_id)
                else:
                    finished.append((task_id, outcome))
        return pending, finished
    pending, finished = [], []
    for d in dep:
        p, f = _dependency_ids(d)
        pending.extend(p)
        finished.extend(f)
    return pending, finished


class LoadBalancedView(_View):
    """Tasks go to whichever engine has room (the task interface).

    Options, for every call of the view (:meth:`set_flags`) or for a block
    of calls (:meth:`temp_flags`); ``map`` also takes them as keywords:

    ``retries``
        times a task is sent again if its engine dies (default 0)
    ``timeout``
        seconds from submission; then the task ends with TaskTimedOut (and
        is interrupted if running)
    ``after``
        AsyncResults or task ids that must end successfully first
    ``follow``
        AsyncResults or task ids: run on the engine where they ran
    ``targets``
        engine ids the tasks may run on (default: any)
    ``priority``
        higher runs first (default 0)

    A dependency already known here to have failed (for ``follow``: to
    have never run) ends the task at once with ImpossibleDependency; one
    known to have succeeded is left out (for ``follow``: its engine becomes
    the target).

    >>> with lv.temp_flags(timeout=5, retries=1):          # doctest: +SKIP
    ...     ar = lv.apply(f, 1)
    """

    def __init__(self, client: Client, targets: Optional[Sequence[int]] = None, block: bool = False,
                 retries: int = 0, timeout: Optional[float] = None, after: Dependency = None,
                 follow: Dependency = None, priority: int = 0):
        super().__init__(client, block)
        self.targets: Optional[List[int]] = None
        self.retries = 0
        self.timeout: Optional[float] = None
        self.after: Dependency = None
        self.follow: Dependency = None
        self.priority = 0
        self.set_flags(targets=targets, retries=retries, timeout=timeout, after=after, follow=follow,
                       priority=priority)

    def __repr__(self) -> str:
        where = "" if self.targets is None else f" targets={self.targets}"
        return f"<LoadBalancedView{where}>"

    # -- options ---------------------------------------------------------------------
    def set_flags(self, **flags: Any) -> None:
        """Sets options for later calls: retries, timeout (s), after, follow,
        targets, priority, block."""
        for name, value in flags.items():
            if name not in FLAGS:
                raise TypeError(f"unknown flag {name!r}; flags are {', '.join(FLAGS)}")
            if name == "retries" and (not isinstance(value, int) or value < 0):
                raise ValueError("retries must be an integer >= 0")
            if name == "timeout" and value is not None and value <= 0:
                raise ValueError("timeout must be a positive number of seconds (or None)")
            if name == "priority" and not isinstance(value, int):
                raise ValueError("priority must be an integer")
            if name == "targets" and value is not None:
                value = [value] if isinstance(value, int) else list(value)
                if not value:
                    raise ValueError("targets selects no engines")
            setattr(self, name, value)

    @contextlib.contextmanager
    def temp_flags(self, **flags: Any) -> Iterator["LoadBalancedView"]:
        """Sets options for the calls inside a ``with`` block only."""
        saved = {name: getattr(self, name) for name in flags if name in FLAGS}
        self.set_flags(**flags)
        try:
            yield self
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    def _options(self, overrides: Dict[str, Any]) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        """The Submit options of one call, or the reason it cannot run."""
        if (not overrides and not self.retries and self.timeout is None and not self.priority
                and self.targets is None and self.after is None and self.follow is None):
            return None, None  # the default view: nothing to compute per call
        flags = {name: getattr(self, name) for name in FLAGS}
        for name, value in overrides.items():
            if name not in FLAGS:
                raise TypeError(f"unknown flag {name!r}; flags are {', '.join(FLAGS)}")
        if overrides:
            probe = LoadBalancedView.__new__(LoadBalancedView)
            probe.__dict__.update(flags)
            probe.set_flags(**overrides)
            flags = {name: getattr(probe, name) for name in FLAGS}
        opts: Dict[str, Any] = {}
        if flags["retries"]:
            opts["retries"] = int(flags["retries"])
        if flags["timeout"] is not None:
            opts["timeout_ms"] = max(1, int(round(float(flags["timeout"]) * 1000)))
        if flags["priority"]:
            opts["priority"] = int(flags["priority"])
        engines = flags["targets"]
        after, finished_after = _dependency_ids(flags["after"])
        follow, finished_follow = _dependency_ids(flags["follow"])
        for task_id, outcome in finished_after:
            if not outcome.ok:
                return None, f"dependency {task_id} failed: {outcome.value!r}"
        # A finished task to follow has a known engine: run there (as the
        # broker does, also after a remote error; a task that never ran on
        # an engine cannot be followed).
        for task_id, outcome in finished_follow:
            if outcome.engine_id is None or outcome.engine_id < 0:
                return None, f"task {task_id} to follow never ran: {outcome.value!r}"
        where = {o.engine_id for _, o in finished_follow}
        if len(where) > 1:
            return None, f"the tasks to follow ran on different engines {sorted(where)}"
        if where:
            engine = where.pop()
            if engine is None or (engines is not None and engine not in engines):
                return None, f"the task to follow ran on engine {engine}, outside targets {engines}"
            engines = [engine]
        if engines is not None:
            opts["engines"] = list(engines)
        if after:
            opts["after"] = after
        if follow:
            opts["follow"] = follow
        return (opts or None), None

    def _send(self, payloads: List[List[Any]], ar: AsyncResult, overrides: Dict[str, Any]) -> AsyncResult:
        opts, impossible = self._options(overrides)
        if impossible is not None:
            return self.client._submit([([LOAD_BALANCED], None, None) for _ in payloads], ar,
                                       failed=[(STATUS_IMPOSSIBLE, impossible)] * len(payloads))
        return self.client._submit([([LOAD_BALANCED], frames, opts) for frames in payloads], ar)

    # -- calls -----------------------------------------------------------------------------
    def apply(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        """Runs ``f(*args, **kwargs)`` on one free engine (honours ``self.block``)."""
        return self._apply(f, args, kwargs, None)

    def apply_async(self, f: Callable, *args: Any, **kwargs: Any) -> AsyncResult:
        return self._apply(f, args, kwargs, False)

    def apply_sync(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        return self._apply(f, args, kwargs, True)

    def _apply(self, f: Callable, args: tuple, kwargs: dict, block: Optional[bool]) -> Any:
        # AsyncResult(client, 1, single=True, label="apply"), positionally:
        # keyword arguments cost a dict per call.
        ar = AsyncResult(self.client, 1, None, True, True, False, "apply")
        frames = _serialize.dumps_apply(f, args, kwargs)
        if (len(frames) == 1 and not self.retries and self.timeout is None and not self.priority
                and self.targets is None and self.after is None and self.follow is None):
            # The default view and one frame: no options to compute, nothing
            # for shared memory (straight to the client's one-task submit).
            self.client._submit_one([LOAD_BALANCED], frames, None, ar)
        else:
            self._send([frames], ar, {})
        if block or (block is None and self.block):
            return ar.get()
        return ar

    def _engines_hint(self) -> int:
        return max(1, len(self.targets) if self.targets is not None else len(self.client.ids))

    def map(self, f: Callable, *seqs: Iterable[Any], chunksize: Optional[int] = None, ordered: bool = True,
            block: Optional[bool] = None, **flags: Any) -> Any:
        """Maps ``f`` over ``seqs`` with dynamic load balancing.

        The input is cut into chunks of ``chunksize`` items (default: about
        eight chunks per engine); each chunk is one task.  ``ordered=False``
        yields results in the order they finish.  ``flags`` (retries,
        timeout, after, follow, targets, priority) apply to this call only.
        """
        seqs = tuple(_as_sequence(s) for s in seqs)
        if not seqs:
            raise TypeError("map() needs at least one sequence")
        if block is None:
            block = flags.pop("block", None)
        n = min(len(s) for s in seqs)
        if chunksize is None:
            chunksize = max(1, math.ceil(n / (self._engines_hint() * CHUNKS_PER_ENGINE)))
        if chunksize < 1:
            raise ValueError("chunksize must be at least 1")
        fn = _serialize.dumps_function(f)
        starts = range(0, n, chunksize)
        ar = AsyncResult(self.client, len(starts), ordered=ordered, flatten=True, label="map")
        payloads = [_serialize.dumps(map_op(fn, seqs, a, min(a + chunksize, n))) for a in starts]
        self._send(payloads, ar, flags)
        return self._finish(ar, block)

    def map_sync(self, f: Callable, *seqs: Iterable[Any], **kwargs: Any) -> List[Any]:
        return self.map(f, *seqs, block=True, **kwargs)

    def imap(self, f: Callable, *iterables: Iterable[Any], ordered: bool = True,
             max_outstanding: Optional[int] = None, **flags: Any) -> Iterator[Any]:
        """Like the built-in ``map``, lazily: results are yielded as they come.

        The input is read only as tasks finish, with at most
        ``max_outstanding`` tasks in flight (default: a few per engine), so
        it may be long or endless.  One task per item.  A failed item
        raises when its turn comes; leaving the loop early aborts the tasks
        still in flight.

        >>> for y in lv.imap(slow, itertools.count()):   # doctest: +SKIP
        ...     if y > 100: break
        """
        if not iterables:
            raise TypeError("imap() needs at least one iterable")
        if max_outstanding is None:
            max_outstanding = IMAP_TASKS_PER_ENGINE * self._engines_hint()
        if max_outstanding < 1:
            raise ValueError("max_outstanding must be at least 1")
        self._options(flags)  # refuse bad flags now, not at the first next()
        fn = _serialize.dumps_function(f)
        return self._imap(fn, zip(*iterables), ordered, max_outstanding, flags)

    def _imap(self, fn: bytes, items: Iterator[tuple], ordered: bool, max_outstanding: int,
              flags: Dict[str, Any]) -> Iterator[Any]:
        inflight: "collections.deque[AsyncResult]" = collections.deque()
        exhausted = False

        def top_up() -> None:
            nonlocal exhausted
            while not exhausted and len(inflight) < max_outstanding:
                item = next(items, _END)
                if item is _END:
                    exhausted = True
                    return
                ar = AsyncResult(self.client, 1, single=True, label="imap")
                self._send([_serialize.dumps(("apply", fn, item, {}))], ar, flags)
                inflight.append(ar)

        try:
            top_up()
            while inflight:
                if ordered:
                    ar = inflight.popleft()
                    ar.wait()
                else:
                    done, _ = concurrent.futures.wait(inflight, return_when=concurrent.futures.FIRST_COMPLETED)
                    ar = next(a for a in inflight if a in done)
                    inflight.remove(ar)
                top_up()
                yield ar.get()
        finally:
            if inflight:
                self.client.abort(list(inflight))


_END = object()
