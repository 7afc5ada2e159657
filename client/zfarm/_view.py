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

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from . import _serialize
from ._asyncresult import AsyncResult
from ._client import LOAD_BALANCED, Client

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


def _as_sequence(seq: Iterable[Any]) -> Sequence[Any]:
    if hasattr(seq, "__len__") and hasattr(seq, "__getitem__"):
        return seq  # type: ignore[return-value]
    return list(seq)


class _View:
    def __init__(self, client: Client, block: bool = False):
        self.client = client
        self.block = block

    def _finish(self, ar: AsyncResult, block: Optional[bool]) -> Any:
        return ar.get() if (self.block if block is None else block) else ar


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
        ar = AsyncResult(self.client, len(self._ids), single=self._single, combine=combine, label=label)
        self.client._submit([(self._ids, _serialize.dumps(op), 0)], ar)
        return self._finish(ar, block)

    def _each(self, ops: List[tuple], label: str, block: Optional[bool], combine: Optional[Callable] = None,
              flatten: bool = False) -> Any:
        # One different task per engine (scatter, map).
        ar = AsyncResult(self.client, len(self._ids), combine=combine, flatten=flatten, label=label)
        self.client._submit([([t], _serialize.dumps(op), 0) for t, op in zip(self._ids, ops)], ar)
        return self._finish(ar, block)

    def activate(self, suffix: str = "") -> None:
        """Binds the IPython magics (%px, ...) to this view's engines."""
        from ._magics import activate

        activate(self.client, list(self._ids), suffix)

    # -- code and functions ------------------------------------------------------
    def execute(self, code: str, block: Optional[bool] = None) -> Any:
        """Runs ``code`` in each engine's namespace."""
        return self._all(("execute", code), "execute", block)

    def apply(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        """Calls ``f(*args, **kwargs)`` on every engine (honours ``self.block``)."""
        return self._all(("apply", _serialize.dumps_function(f), args, kwargs), "apply", None)

    def apply_async(self, f: Callable, *args: Any, **kwargs: Any) -> AsyncResult:
        return self._all(("apply", _serialize.dumps_function(f), args, kwargs), "apply", False)

    def apply_sync(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        return self._all(("apply", _serialize.dumps_function(f), args, kwargs), "apply", True)

    def map(self, f: Callable, *seqs: Iterable[Any], block: Optional[bool] = None) -> Any:
        """Maps ``f`` over ``seqs``: each engine takes one contiguous block."""
        seqs = tuple(_as_sequence(s) for s in seqs)
        n = min(len(s) for s in seqs)
        fn = _serialize.dumps_function(f)
        blocks = [partition(s[:n] if len(s) != n else s, len(self._ids)) for s in seqs]
        ops = [("map", fn, list(zip(*[b[i] for b in blocks]))) for i in range(len(self._ids))]
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
        """Joins the blocks of ``name`` from every engine, in engine order."""
        ar = AsyncResult(self.client, len(self._ids), combine=concatenate, label="gather")
        self.client._submit([(self._ids, _serialize.dumps(("pull", name)), 0)], ar)
        return self._finish(ar, block)

    def reset(self, block: Optional[bool] = None) -> Any:
        """Clears each engine's namespace."""
        return self._all(("reset",), "reset", block)

    def keys(self, block: Optional[bool] = None) -> Any:
        """Names defined in each engine's namespace."""
        return self._all(("keys",), "keys", block)


class LoadBalancedView(_View):
    """Tasks go to whichever engine has room (the task interface)."""

    def __init__(self, client: Client, targets: Optional[Sequence[int]] = None, block: bool = False,
                 retries: int = 0):
        super().__init__(client, block)
        if targets is not None:
            raise NotImplementedError("restricting a load-balanced view to targets is not supported yet")
        self.retries = retries

    def __repr__(self) -> str:
        return "<LoadBalancedView>"

    def apply(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        """Runs ``f(*args, **kwargs)`` on one free engine (honours ``self.block``)."""
        return self._apply(f, args, kwargs, None)

    def apply_async(self, f: Callable, *args: Any, **kwargs: Any) -> AsyncResult:
        return self._apply(f, args, kwargs, False)

    def apply_sync(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        return self._apply(f, args, kwargs, True)

    def _apply(self, f: Callable, args: tuple, kwargs: dict, block: Optional[bool]) -> Any:
        ar = AsyncResult(self.client, 1, single=True, label="apply")
        frames = _serialize.dumps(("apply", _serialize.dumps_function(f), args, kwargs))
        self.client._submit([([LOAD_BALANCED], frames, self.retries)], ar)
        return self._finish(ar, block)

    def map(self, f: Callable, *seqs: Iterable[Any], chunksize: Optional[int] = None, ordered: bool = True,
            block: Optional[bool] = None) -> Any:
        """Maps ``f`` over ``seqs`` with dynamic load balancing.

        The input is cut into chunks of ``chunksize`` items (default: about
        eight chunks per engine); each chunk is one task.  ``ordered=False``
        yields results in the order they finish.
        """
        seqs = tuple(_as_sequence(s) for s in seqs)
        if not seqs:
            raise TypeError("map() needs at least one sequence")
        n = min(len(s) for s in seqs)
        if chunksize is None:
            engines = max(1, len(self.client.ids))
            chunksize = max(1, math.ceil(n / (engines * CHUNKS_PER_ENGINE)))
        if chunksize < 1:
            raise ValueError("chunksize must be at least 1")
        fn = _serialize.dumps_function(f)
        starts = range(0, n, chunksize)
        ar = AsyncResult(self.client, len(starts), ordered=ordered, flatten=True, label="map")
        messages = []
        for a in starts:
            b = min(a + chunksize, n)
            items = list(zip(*[s[a:b] for s in seqs]))
            messages.append(([LOAD_BALANCED], _serialize.dumps(("map", fn, items)), self.retries))
        self.client._submit(messages, ar)
        return self._finish(ar, block)

    def map_sync(self, f: Callable, *seqs: Iterable[Any], **kwargs: Any) -> List[Any]:
        return self.map(f, *seqs, block=True, **kwargs)
