"""Payload frames: a pickle (protocol 5) and its out-of-band buffers.

The first frame is the pickle; every large contiguous buffer (a numpy array's
data, a bytes object reached through ``pickle.PickleBuffer``) travels as a
frame of its own, so it is never copied into the pickle stream.  Between
processes of one host the largest of them may instead travel through shared
memory (:mod:`zfarm._shm`); :func:`loads` accepts both.

>>> frames = dumps({"a": 1})
>>> loads(frames)
{'a': 1}
"""
from __future__ import annotations

import pickle
import types
from typing import Any, Dict, List, Sequence, Tuple

import cloudpickle

from . import _shm

PROTOCOL = 5
# Buffers smaller than this stay inside the pickle: a frame of its own costs
# more than copying a few kilobytes.
OUT_OF_BAND_MIN = 64 * 1024


def _splitter(frames: List[Any]):
    def callback(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        if view.nbytes < OUT_OF_BAND_MIN:
            return True  # serialise in-band
        frames.append(view)
        return False

    return callback


# Values made only of these types (in tuples, lists and dicts) pickle the
# same with the standard pickler, which is several times faster than
# cloudpickle's (no Python-level hook per object): the common case of a small
# task or result.
_PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None), complex})
# How many objects the check looks at before giving up (then cloudpickle).
PLAIN_CHECK_BUDGET = 64


def _is_plain(obj: Any) -> bool:
    stack = [obj]
    budget = PLAIN_CHECK_BUDGET
    while stack:
        x = stack.pop()
        kind = type(x)
        if kind in _PLAIN_TYPES:
            continue
        if kind is tuple or kind is list:
            budget -= len(x)
            stack.extend(x)
        elif kind is dict:
            budget -= 2 * len(x)
            stack.extend(x.keys())
            stack.extend(x.values())
        else:
            return False
        if budget < 0:
            return False
    return True


def dumps(obj: Any) -> List[Any]:
    """Pickle ``obj`` into a list of frames (bytes, then memoryviews).

    cloudpickle pickles by value what the other side could not import
    (lambdas, closures, functions and classes of ``__main__`` or of an
    engine's namespace); everything else goes by reference as plain pickle.
    """
    if _is_plain(obj):
        return [pickle.dumps(obj, protocol=PROTOCOL)]
    frames: List[Any] = [b""]
    frames[0] = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=_splitter(frames))
    return frames


# Pickles of ("apply", fn, (), {}) by the pickled function: a call without
# arguments (f()) of a function pickled by reference is the same bytes every
# time.  Only short function pickles (by reference: a module and a name) are
# kept; equal keys give equal pickles, so a wrong hit cannot happen.
_noarg_calls: Dict[bytes, bytes] = {}
NOARG_KEY_MAX = 256


def dumps_call(fn: bytes, args: tuple, kwargs: Dict[str, Any]) -> List[Any]:
    """``dumps(("apply", fn, args, kwargs))`` for a function pickled by
    :func:`dumps_function`.

    >>> loads(dumps_call(b"f", (), {}))
    ('apply', b'f', (), {})
    """
    if args or kwargs or len(fn) > NOARG_KEY_MAX:
        return dumps(("apply", fn, args, kwargs))
    data = _noarg_calls.get(fn)
    if data is None:
        data = pickle.dumps(("apply", fn, (), {}), protocol=PROTOCOL)
        if len(_noarg_calls) >= FN_CACHE_SIZE:
            _noarg_calls.clear()
        _noarg_calls[fn] = data
    return [data]


# Pickles of callables that go by reference (a module and a name: ``abs``,
# ``math.sqrt``, a function of an installed module), by id; the entry holds
# the callable, so the id cannot be reused while it is here.  A callable
# pickled by value (a lambda, a closure, anything of ``__main__``) is pickled
# again every time: what it captures may have changed.
_fn_pickles: Dict[int, Tuple[Any, bytes]] = {}
FN_CACHE_SIZE = 256
_by_reference = getattr(getattr(cloudpickle, "cloudpickle", None), "_should_pickle_by_reference", None)
_by_value_modules = getattr(getattr(cloudpickle, "cloudpickle", None), "_PICKLE_BY_VALUE_MODULES", None)
# The modules registered with cloudpickle's register_pickle_by_value when the
# cache was last filled: a change may turn "by reference" into "by value".
_by_value_seen: frozenset = frozenset()


# The whole payload of a call without arguments of a callable in
# _fn_pickles, by the callable's id (the entry holds the callable): apply's
# payload in one look-up.  Emptied with _fn_pickles.
_noarg_payloads: Dict[int, Tuple[Any, bytes]] = {}


def dumps_apply(f: Any, args: tuple, kwargs: Dict[str, Any]) -> List[Any]:
    """The payload of ``apply``: ``dumps(("apply", dumps_function(f), args, kwargs))``.

    >>> loads(dumps_apply(abs, (-1,), {}))[2]
    (-1,)
    """
    if not args and not kwargs and (_by_value_modules is None or _by_value_modules == _by_value_seen):
        hit = _noarg_payloads.get(id(f))
        if hit is not None and hit[0] is f:
            return [hit[1]]
    frames = dumps_call(dumps_function(f), args, kwargs)
    if not args and not kwargs:
        cached = _fn_pickles.get(id(f))
        if cached is not None and cached[0] is f:  # pickled by reference: the same bytes every time
            if len(_noarg_payloads) >= FN_CACHE_SIZE:
                _noarg_payloads.clear()
            _noarg_payloads[id(f)] = (f, frames[0])
    return frames


def dumps_function(obj: Any) -> bytes:
    """Pickle a callable by value when needed (cloudpickle).

    A callable pickled by reference is pickled once and its bytes reused.
    """
    global _by_value_seen
    if _by_value_modules is not None and _by_value_modules != _by_value_seen:
        _fn_pickles.clear()
        _noarg_payloads.clear()
        _by_value_seen = frozenset(_by_value_modules)
    hit = _fn_pickles.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    data = cloudpickle.dumps(obj, protocol=PROTOCOL)
    if _by_reference is not None and _by_value_modules is not None:
        if isinstance(obj, types.BuiltinFunctionType):
            # abs, math.sqrt: by name; a bound method such as [].append
            # carries its object, which may change.
            cacheable = isinstance(obj.__self__, types.ModuleType)
        else:
            try:
                cacheable = isinstance(obj, (type, types.FunctionType)) and _by_reference(obj)
            except Exception:  # noqa: BLE001 - an odd object: just do not cache it
                cacheable = False
        if cacheable:
            if len(_fn_pickles) >= FN_CACHE_SIZE:
                _fn_pickles.clear()
                _noarg_payloads.clear()
            _fn_pickles[id(obj)] = (obj, data)
    return data


def loads(frames: Sequence[Any]) -> Any:
    """Inverse of :func:`dumps`; frames may be any buffer-protocol objects.

    A buffer sent through shared memory (a descriptor frame, see
    :mod:`zfarm._shm`) is mapped copy-on-write and unpickled from there.
    """
    return pickle.loads(frames[0], buffers=_shm.import_buffers(frames[1:]))
