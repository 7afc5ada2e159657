"""Function decorators of the views (``@view.remote``, ``@view.parallel``)
and ``DirectView.sync_imports``.

>>> @rc.load_balanced_view().remote(block=True)     # doctest: +SKIP
... def host():
...     import socket
...     return socket.gethostname()
>>> host()                                           # doctest: +SKIP
'node7'
>>> @rc[:].parallel(block=True)                      # doctest: +SKIP
... def total(block):
...     return [sum(block)]
>>> total(range(100))                                # doctest: +SKIP
[1225, 3725]
"""
from __future__ import annotations

import builtins
import contextlib
import functools
import sys
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple


class RemoteFunction:
    """``f`` bound to a view: calling it runs ``f`` there.

    On a DirectView each engine runs it (a list of results, one per
    engine); on a LoadBalancedView one free engine does.  ``block=None``
    follows the view's ``block``.
    """

    def __init__(self, view: Any, f: Callable, block: Optional[bool] = None):
        self.view = view
        self.func = f
        self.block = block
        functools.update_wrapper(self, f)

    def _block(self) -> bool:
        return self.view.block if self.block is None else self.block

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._block():
            return self.view.apply_sync(self.func, *args, **kwargs)
        return self.view.apply_async(self.func, *args, **kwargs)


class ParallelFunction(RemoteFunction):
    """``f`` applied to blocks of its sequence arguments in parallel.

    ``pf(seq)`` cuts ``seq`` into blocks (one per engine on a DirectView,
    the view's default chunks on a LoadBalancedView), calls ``f(block)`` on
    each and joins the returned sequences in order, so ``f`` must take a
    block and return a sequence.  ``pf.map(seq)`` calls ``f`` on each item
    instead, as ``view.map`` does.
    """

    def __call__(self, *seqs: Iterable[Any]) -> Any:
        from . import _serialize
        from ._asyncresult import AsyncResult
        from ._view import CHUNKS_PER_ENGINE, DirectView, _as_sequence, concatenate, partition

        if not seqs:
            raise TypeError(f"{self.__name__}() needs at least one sequence")
        seqs = tuple(_as_sequence(s) for s in seqs)
        n = min(len(s) for s in seqs)
        seqs = tuple(s if len(s) == n else s[:n] for s in seqs)
        view = self.view
        fn = _serialize.dumps_function(_call_on_block)
        if isinstance(view, DirectView):
            # A block per engine (an engine may get an empty one).
            blocks = list(zip(*[partition(s, len(view)) for s in seqs]))
            ops = [("apply", fn, (self.func, b), {}) for b in blocks]
            return view._each(ops, "parallel", self._block(), combine=concatenate)
        ways = max(1, min(n, view._engines_hint() * CHUNKS_PER_ENGINE))
        blocks = list(zip(*[partition(s, ways) for s in seqs]))
        ar = AsyncResult(view.client, len(blocks), combine=concatenate, label="parallel")
        view._send([_serialize.dumps(("apply", fn, (self.func, b), {})) for b in blocks], ar, {})
        return view._finish(ar, self._block())

    def map(self, *seqs: Iterable[Any]) -> Any:
        """``f`` on each item (or each tuple of items of several sequences)."""
        return self.view.map(self.func, *seqs, block=self._block())


def _call_on_block(f: Callable, blocks: Tuple[Any, ...]) -> Any:
    # Runs on an engine: f on its block of each sequence.  The client joins
    # the returned sequences in block order (concatenate keeps numpy arrays
    # and strings as they are).
    return f(*blocks)


@contextlib.contextmanager
def sync_imports(view: Any, local: bool = True, quiet: bool = False) -> Iterator[None]:
    """The imports of the ``with`` block run on the view's engines too.

    Only ``import x`` and ``from x import y`` statements written in the
    block itself are copied (not the imports those modules make); relative
    imports are not.  With ``local=False`` nothing is imported here.
    """
    caller = sys._getframe(2)  # the with statement's frame (past contextmanager)
    statements: List[str] = []
    real_import = builtins.__import__

    def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and sys._getframe(1) is caller:
            if fromlist:
                statements.append(f"from {name} import {', '.join(fromlist)}")
            else:
                statements.append(f"import {name}")
            if not quiet:
                print(f"importing {name} on engine(s)")
            if not local:
                return _Stub(name)
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = recording_import
    try:
        yield
    finally:
        builtins.__import__ = real_import
    if statements:
        view.execute("\n".join(statements), block=True)


class _Stub:
    """What a name imported with ``local=False`` is bound to here."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> "_Stub":
        return _Stub(f"{self._name}.{attr}")

    def __repr__(self) -> str:
        return f"<{self._name} imported on the engines only>"
