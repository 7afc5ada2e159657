"""The Python half of a zfarm engine.

``zfarm-engine`` (C++) owns the socket and heartbeats; for every task it calls
:func:`run_task` on its main thread with the payload frames and sends back
the frames returned.  One persistent namespace holds the user's variables.

A task payload is a pickled tuple ``(op, *args)``:

========= ================================= ==============================
op        args                              result value
========= ================================= ==============================
execute   code (str)                        None
apply     fn, args, kwargs                  fn(*args, **kwargs)
map       fn, list of argument tuples       [fn(*a) for a in ...]
push      dict of name -> value             None
pull      name (str) or list of names       value, or list of values
reset     --                                None
keys      --                                list of names
========= ================================= ==============================

The result payload is a pickled tuple ``(kind, value, stdout, stderr)`` with
kind ``"ok"`` or ``"error"``; for an error the value is a dict with
``ename``, ``evalue`` and ``traceback``.

What a task prints is kept for the result, at most :data:`OUTPUT_LIMIT`
characters per stream (environment ``ZFARM_OUTPUT_LIMIT``); the rest is
dropped and a note at the end says how much.  Inside ``zfarm-engine`` the
kept text is also streamed to the client while the task runs
(``_zfarm_engine.write_output``; see docs/protocol.rst, "Output").
"""
from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _serialize, _shm

try:  # only inside zfarm-engine: streams printed text while a task runs
    from _zfarm_engine import write_output as _stream_output
except ImportError:
    _stream_output = None


def _output_limit() -> int:
    try:
        return max(0, int(os.environ.get("ZFARM_OUTPUT_LIMIT", "")))
    except ValueError:
        return 8 * 1024 * 1024


# Characters of stdout (and, apart, of stderr) one task may leave in its
# result and stream: a task printing gigabytes must not take the engine's,
# broker's or client's memory with it.
OUTPUT_LIMIT = _output_limit()

STATUS_OK = 0
STATUS_REMOTE_ERROR = 1

namespace: Dict[str, Any] = {"__name__": "__zfarm__"}
# The error info of the last task that failed (None after a success); the
# engine reads it to tell an interrupted task (KeyboardInterrupt) apart.
last_error: Optional[Dict[str, Any]] = None
_fn_cache: Dict[bytes, Any] = {}
# Whole payloads of calls without arguments (("apply", fn, (), {}), the same
# bytes every time for one function) -> the function: no unpickling at all
# for a repeated f().  Keyed by the payload, which holds the function's
# pickle, so it reuses a function exactly when _fn_cache would.  A repeated
# ("execute", code) or ("pull", name) is such a call too (see _repeatable).
_noarg_calls: Dict[bytes, Any] = {}
NOARG_CALLS_MAX = 64

# The file name of code run by ``execute``, as tracebacks show it.
EXECUTE_FILENAME = "<zfarm-execute>"
# Compiled ``execute`` code kept for reuse: at most this many sources, this
# many characters of source in all, and only sources up to this long.
CODE_CACHE_ENTRIES = 256
CODE_CACHE_CHARS = 1 << 20
CODE_CACHE_ENTRY_CHARS = 64 * 1024


class _TaskState:
    """What run_task changes per task, as attributes of one object rather
    than module globals: storing a module global makes every global lookup
    of this module miss CPython's cache until the next specialisation.

    ``current``: the captures of the running task.  Only they stream:
    something that kept an earlier task's stream (a logging handler made in
    it) must not stream into a later task's output.
    ``spare``: a pair of captures (stdout, stderr) a task left untouched and
    unreferenced, kept for the next task: making and finalising two StringIO
    objects is a good part of a no-op task's cost.  Only a pair nobody else
    holds is kept, so a stream an earlier task kept is never the stream of a
    later one.
    """

    __slots__ = ("current", "spare")

    def __init__(self) -> None:
        self.current: Tuple[Any, ...] = ()
        self.spare: Optional[Tuple[Any, Any]] = None


_state = _TaskState()


class _CodeCache:
    """Compiled ``execute`` code by its source, least recently used dropped
    first.

    Parsing and compiling even ``"pass"`` cost more than the rest of the
    engine's work for the task (callgrind: about 48,000 of 77,000
    instructions), and the same source comes again and again (every engine
    of a DirectView gets the same cell; loops call the same statement).
    A code object runs the same however often it is executed; its file
    name, hence every traceback, is the one the compile gave.  Only exact
    ``str`` sources are kept (an AST object could change meanwhile).

    >>> c = _CodeCache()
    >>> c.compiled("x = 1") is c.compiled("x = 1")
    True
    """

    __slots__ = ("entries", "chars")

    def __init__(self) -> None:
        self.entries: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
        self.chars = 0  # characters of the sources kept

    def compiled(self, code: Any) -> Any:
        entries = self.entries
        cacheable = type(code) is str and len(code) <= CODE_CACHE_ENTRY_CHARS
        if cacheable:
            hit = entries.get(code)
            if hit is not None:
                entries.move_to_end(code)
                return hit
        # (Compiled here, in this module, as before there was a cache: the
        # code inherits this module's __future__ flags either way.)
        compiled = compile(code, EXECUTE_FILENAME, "exec")
        if cacheable:
            entries[code] = compiled
            self.chars += len(code)
            while len(entries) > CODE_CACHE_ENTRIES or self.chars > CODE_CACHE_CHARS:
                old, _ = entries.popitem(last=False)
                self.chars -= len(old)
        return compiled


_codes = _CodeCache()


class _Capture(io.StringIO):
    """A text stream that stands in for stdout during a task (``_CaptureErr``
    for stderr).

    Keeps at most ``_limit`` characters and passes what it keeps to
    ``_sink(stream, text, capped)`` as it is written.  The settings are class
    attributes, so making one per task costs no Python-level ``__init__``.

    >>> c = _Capture()
    >>> c._sink, c._room, c._limit = None, 3, 3
    >>> c.write("hello")
    5
    >>> c.text()
    'hel\\n[zfarm: output limit of 3 characters reached; 2 more were dropped]\\n'
    """

    _stream = 0
    _sink: Optional[Callable[[int, str, bool], None]] = (
        staticmethod(_stream_output) if _stream_output is not None else None)
    _limit = OUTPUT_LIMIT
    _room = OUTPUT_LIMIT  # characters it may still keep (per instance once written)
    _dropped = 0

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        n = len(s)
        if n <= self._room:
            self._room -= n
            super().write(s)
            if self._sink is not None and n and self in _state.current:
                self._sink(self._stream, s, False)
            return n
        kept = s[:self._room]
        first_drop = self._dropped == 0
        self._dropped += n - len(kept)
        self._room = 0
        if kept:
            super().write(kept)
        if self._sink is not None and (kept or first_drop) and self in _state.current:
            self._sink(self._stream, kept, True)
        return n

    def text(self) -> str:
        """What was kept, and a note of what was dropped, if anything was."""
        text = self.getvalue()
        if self._dropped:
            text += (f"\n[zfarm: output limit of {self._limit} characters reached; "
                     f"{self._dropped} more were dropped]\n")
        return text


class _CaptureErr(_Capture):
    _stream = 1


def _resolve_fn(fn: Any) -> Any:
    # Functions may arrive pre-pickled (bytes) so a client pickles them once
    # per map; keep the last few unpickled ones.
    if isinstance(fn, (bytes, bytearray)):
        key = bytes(fn)
        cached = _fn_cache.get(key)
        if cached is None:
            cached = pickle.loads(key)
            if len(_fn_cache) > 64:
                _fn_cache.clear()
            _fn_cache[key] = cached
        return cached
    return fn


def _run(op: str, args: Tuple[Any, ...]) -> Any:
    if op == "apply":
        fn, fargs, fkwargs = args
        return _resolve_fn(fn)(*fargs, **fkwargs)
    if op == "map":
        fn, items = args
        fn = _resolve_fn(fn)
        return [fn(*item) for item in items]
    if op == "map1":  # one sequence: the items themselves, not 1-tuples
        fn, items = args
        return list(map(_resolve_fn(fn), items))
    if op == "execute":
        (code,) = args
        exec(_codes.compiled(code), namespace)
        return None
    if op == "push":
        (values,) = args
        namespace.update(values)
        return None
    if op == "pull":
        (names,) = args
        if isinstance(names, str):
            return _lookup(names)
        return [_lookup(n) for n in names]
    if op == "reset":
        namespace.clear()
        namespace["__name__"] = "__zfarm__"
        return None
    if op == "keys":
        return sorted(k for k in namespace if not k.startswith("__"))
    raise ValueError(f"unknown zfarm operation {op!r}")


def _repeatable(task: Tuple[Any, ...]) -> Optional[Callable[[], Any]]:
    """What runs ``task``, an ``(op, str)`` pair, when its payload comes
    again, for the operations whose payload says all there is to do:
    execute (its compiled code, for sources the code cache keeps) and pull
    of one name.  None for the rest (push, say, must unpickle fresh values
    every time)."""
    if task[0] == "execute" and len(task[1]) <= CODE_CACHE_ENTRY_CHARS:
        return functools.partial(exec, _codes.compiled(task[1]), namespace)
    if task[0] == "pull":
        return functools.partial(_lookup, task[1])
    return None


def _lookup(name: str) -> Any:
    try:
        return namespace[name]
    except KeyError:
        raise NameError(f"name {name!r} is not defined on this engine") from None


def _error_info(exc: BaseException) -> Dict[str, Any]:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    # Drop the frames of this module: the user wants to see their own code.
    lines = [line for line in tb if "zfarm/_worker.py" not in line]
    return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": "".join(lines)}


# sys.getrefcount of a capture held only by run_task's local, its pair
# and the getrefcount call itself; of the pair, by the local and the call.
_ONLY_OURS = 3
_ONLY_OURS_PAIR = 2
_getrefcount = sys.getrefcount
# sys.stdout and sys.stderr are set and read as items of the sys module's
# dict, which is what setting and reading them as attributes does, with
# fewer steps (the sys module has no attribute hooks).
_SYS_DICT = sys.__dict__


def _loads(frames: List[Any]) -> Any:
    if len(frames) == 1:
        return pickle.loads(frames[0])
    return _serialize.loads(frames)


def _dumps_result(result: Tuple[str, Any, str, str]) -> List[Any]:
    # A number, a string or None is plain: skip the general check (and
    # shared memory, which only large out-of-band buffers use).
    if type(result[1]) in _PLAIN_VALUE:
        return [pickle.dumps(result, protocol=_serialize.PROTOCOL)]
    return _shm.export_result(_serialize.dumps(result))


_PLAIN_VALUE = frozenset({int, float, str, bool, type(None)})


def _small_return(value: Any) -> Tuple[int, Tuple[bytes]]:
    return STATUS_OK, (pickle.dumps(("ok", value, "", ""), protocol=_serialize.PROTOCOL),)


# What run_task returns, made once, for the commonest values with no
# output: None (execute, push, most functions called for their effect),
# booleans and small ints (exact ints only: the dict is keyed by the int,
# and False == 0).  The frames are a tuple: nothing can change them.
_NONE_RETURN = _small_return(None)
_TRUE_RETURN = _small_return(True)
_FALSE_RETURN = _small_return(False)
_INT_RETURNS: Dict[int, Tuple[int, Tuple[bytes]]] = {v: _small_return(v) for v in range(-8, 257)}


def run_task(task_id: int, frames: List[Any]) -> Tuple[int, List[Any]]:
    """Run one task; never raises.  Returns (status, result frames)."""
    global last_error
    if last_error is not None:
        last_error = None
    state = _state
    # The pair is the one tuple of captures of this task: state.current
    # while it runs, state.spare after it if it may be reused.
    pair = state.spare
    if pair is not None:
        state.spare = None
    else:
        pair = (_Capture(), _CaptureErr())
    out, err = pair
    state.current = pair
    sysdict = _SYS_DICT
    saved_out, saved_err = sysdict["stdout"], sysdict["stderr"]
    sysdict["stdout"], sysdict["stderr"] = out, err
    try:
        try:
            fn = _noarg_calls.get(frames[0]) if len(frames) == 1 and type(frames[0]) is bytes else None
            if fn is not None:
                value = fn()
            else:
                task = _loads(frames)
                if not isinstance(task, tuple) or not task or not isinstance(task[0], str):
                    raise TypeError("a zfarm task must be a tuple (op, *args)")
                if task[0] == "apply" and len(task) == 4:
                    fn = _resolve_fn(task[1])
                    if (type(task[1]) is bytes and type(task[2]) is tuple and not task[2]
                            and type(task[3]) is dict and not task[3] and len(frames) == 1
                            and type(frames[0]) is bytes):
                        if len(_noarg_calls) >= NOARG_CALLS_MAX:
                            _noarg_calls.clear()
                        _noarg_calls[frames[0]] = fn
                    value = fn(*task[2], **task[3])
                else:
                    # (The check first: no call for push, map and the like.)
                    run = _repeatable(task) if len(task) == 2 and type(task[1]) is str else None
                    if run is None:
                        value = _run(task[0], task[1:])
                    else:
                        if len(frames) == 1 and type(frames[0]) is bytes:
                            if len(_noarg_calls) >= NOARG_CALLS_MAX:
                                _noarg_calls.clear()
                            _noarg_calls[frames[0]] = run
                        value = run()
            kind, status = "ok", STATUS_OK
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            value, kind, status = _error_info(exc), "error", STATUS_REMOTE_ERROR
            last_error = value
    finally:
        sysdict["stdout"], sysdict["stderr"] = saved_out, saved_err
        state.current = ()
    # Untouched captures: write() was never called (it sets _room on the
    # instance), nothing was written past it (position 0), not closed, and
    # held by no one else, nor is their pair.  (Inline: two calls cost more
    # than the checks.)
    if (not out.__dict__ and not err.__dict__ and _getrefcount(out) == _ONLY_OURS
            and _getrefcount(err) == _ONLY_OURS and _getrefcount(pair) == _ONLY_OURS_PAIR
            and not out.closed and not err.closed and out.tell() == 0 and err.tell() == 0):
        # Nothing printed, and nobody else holds the captures: keep them.
        stdout = stderr = ""
        state.spare = pair
        if status == STATUS_OK:
            if value is None:
                return _NONE_RETURN
            # Exact types only: hashing anything else could run user code.
            kind_of = type(value)
            if kind_of is int:
                small = _INT_RETURNS.get(value)
                if small is not None:
                    return small
            elif kind_of is bool:
                return _TRUE_RETURN if value else _FALSE_RETURN
    else:
        # Plain getvalue() unless a limit was reached: no Python-level call per task.
        stdout = out.text() if out._dropped else out.getvalue()
        stderr = err.text() if err._dropped else err.getvalue()
    del out, err, pair
    try:
        result = _dumps_result((kind, value, stdout, stderr))
    except BaseException as exc:  # the value could not be pickled
        info = _error_info(exc)
        info["evalue"] = f"result of task {task_id} could not be serialised: {info['evalue']}"
        result = _shm.export_result(_serialize.dumps(("error", info, stdout, stderr)))
        status = STATUS_REMOTE_ERROR
        last_error = info
    return status, result
