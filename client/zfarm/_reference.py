"""Reference: an argument that stands for a variable of the engine running
the task.

>>> dv.scatter("x", range(10), block=True)         # doctest: +SKIP
>>> dv.apply_sync(sum, zfarm.Reference("x"))      # doctest: +SKIP
[10, 35]
"""
from __future__ import annotations

from typing import Any


class Reference:
    """The value of ``name`` in the namespace of the engine that unpacks it.

    Pass it among the arguments of ``apply`` (or in the values of a
    ``push``): the engine puts its own variable in its place, so data pushed
    or scattered earlier is used where it lies.  ``name`` may be dotted
    (``"arr.shape"``).  A name the engine does not have fails the task with
    ``NameError``.
    """

    __slots__ = ("name",)

    def __init__(self, name: str):
        if not isinstance(name, str) or not name or not all(p.isidentifier() for p in name.split(".")):
            raise ValueError(f"a Reference needs a (dotted) Python name, not {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"Reference({self.name!r})"

    def __eq__(self, other: Any) -> bool:
        return type(other) is Reference and other.name == self.name

    def __hash__(self) -> int:
        return hash((Reference, self.name))

    def __reduce__(self):
        # Unpickling it is the look-up: the engine resolves it while it
        # unpacks the task, and tasks without one pay nothing.
        return (_lookup, (self.name,))


def _lookup(name: str) -> Any:
    from . import _worker

    head, *rest = name.split(".")
    try:
        obj = _worker.namespace[head]
    except KeyError:
        raise NameError(f"name {head!r} is not defined on this engine (Reference({name!r}))") from None
    for attr in rest:
        obj = getattr(obj, attr)
    return obj
