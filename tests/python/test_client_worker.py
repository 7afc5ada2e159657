"""The engine's Python half (zfarm._worker.run_task) called directly: the
shortcut for repeated calls without arguments, and the cache of compiled
``execute`` code, keep every task's own output, error and result."""
from __future__ import annotations

import pickle

from zfarm import _serialize, _worker


def _result(frames):
    return pickle.loads(frames[0])


def test_a_repeated_call_without_arguments_runs_each_time_with_its_own_output_and_error():
    calls = []

    def f():
        calls.append(1)
        print("call", len(calls))
        if len(calls) == 3:
            raise ValueError("third")
        return len(calls)

    payload = _serialize.dumps_call(_serialize.dumps_function(f), (), {})
    assert len(payload) == 1 and type(payload[0]) is bytes  # what the engine hands run_task
    runs = [_worker.run_task(i, list(payload)) for i in range(4)]
    assert [status for status, _ in runs] == [0, 0, 1, 0]
    results = [_result(frames) for _, frames in runs]
    assert [r[0] for r in results] == ["ok", "ok", "error", "ok"]
    assert [r[2] for r in results] == ["call 1\n", "call 2\n", "call 3\n", "call 4\n"]
    assert results[0][1] == 1 and results[3][1] == 4
    assert results[2][1]["ename"] == "ValueError" and "third" in results[2][1]["traceback"]
    assert _worker.last_error is None  # cleared by the task after the failure


def test_calls_with_arguments_and_other_operations_do_not_take_the_shortcut():
    fn = _serialize.dumps_function(abs)
    assert _result(_worker.run_task(1, _serialize.dumps_call(fn, (-3,), {}))[1])[1] == 3
    assert _result(_worker.run_task(2, _serialize.dumps_call(fn, (-5,), {}))[1])[1] == 5
    _worker.run_task(3, _serialize.dumps(("push", {"zz_shortcut": 9})))
    assert _result(_worker.run_task(4, _serialize.dumps(("pull", "zz_shortcut")))[1])[1] == 9
    # A payload that is not a task at all fails the same way every time.
    for i in range(2):
        status, frames = _worker.run_task(5 + i, [pickle.dumps(("apply", fn, (), {}, "extra"))])
        assert status == 1 and _result(frames)[0] == "error"


def test_captures_are_reused_only_when_the_task_left_them_untouched_and_unheld():
    noop = _serialize.dumps_apply(int, (), {})
    _worker.run_task(1, list(noop))
    first = [id(c) for c in _worker._state.spare]  # ids only: holding them would count as a reference
    assert _worker.run_task(2, list(noop))[0] == 0
    assert [id(c) for c in _worker._state.spare] == first  # the same pair again
    # A task that keeps its stdout: that capture is never handed to a later task.
    _worker.run_task(3, _serialize.dumps(("execute", "import sys\nzz_kept = sys.stdout")))
    kept = _worker.namespace.pop("zz_kept")
    assert _worker._state.spare is None or _worker._state.spare[0] is not kept
    status, frames = _worker.run_task(4, list(noop))
    assert status == 0 and _worker._state.spare[0] is not kept
    # A task that keeps the pair of its captures (not the captures themselves).
    _worker.run_task(6, _serialize.dumps(("execute", "from zfarm import _worker\nzz_pair = _worker._state.current")))
    pair = _worker.namespace.pop("zz_pair")
    assert _worker._state.spare is not pair
    assert _worker._state.spare is None or _worker._state.spare[0] is not pair[0]
    # A task that printed: its output comes back, and its captures are not reused.
    printed = _worker.run_task(5, _serialize.dumps(("execute", "print('hi')")))
    assert _result(printed[1])[2] == "hi\n"


def _execute(task_id, code):
    status, frames = _worker.run_task(task_id, _serialize.dumps(("execute", code)))
    return status, _result(frames)


def test_repeated_execute_runs_each_time_in_the_current_namespace():
    code = "zz_runs = globals().get('zz_runs', 0) + 1\nprint('run', zz_runs)"
    outputs = [_execute(i, code)[1] for i in range(3)]
    assert [o[2] for o in outputs] == ["run 1\n", "run 2\n", "run 3\n"]
    assert _worker.namespace["zz_runs"] == 3
    # After a reset the same (cached) code runs in the emptied namespace.
    _worker.run_task(9, _serialize.dumps(("reset",)))
    assert _execute(10, code)[1][2] == "run 1\n"
    assert code in _worker._codes.entries


def test_redefining_and_different_sources_each_run_their_own_code():
    for i, (code, expected) in enumerate([("def zz_f(): return 1", 1), ("def zz_f(): return 2", 2),
                                          ("def zz_f(): return 1", 1), ("def zz_f():  return 3", 3)]):
        assert _execute(i, code)[0] == 0
        assert _worker.namespace["zz_f"]() == expected


def test_errors_of_cached_code_raise_each_time_with_the_right_traceback():
    failing = "zz_x = 1\ndef zz_g():\n    return 1 / 0\nzz_g()"
    for i in range(3):
        status, (kind, info, _, _) = _execute(i, failing)
        assert (status, kind, info["ename"]) == (1, "error", "ZeroDivisionError")
        lines = info["traceback"].splitlines()
        assert lines.count('  File "<zfarm-execute>", line 4, in <module>') == 1
        assert lines.count('  File "<zfarm-execute>", line 3, in zz_g') == 1
        assert "zfarm/_worker.py" not in info["traceback"]
    # A syntax error is never cached: the same error, with its line, every time.
    for i in range(2):
        status, (kind, info, _, _) = _execute(10 + i, "zz_y = 1\nzz_y = (")
        assert (status, info["ename"]) == (1, "SyntaxError")
        assert "line 2" in info["evalue"] and "<zfarm-execute>" in info["evalue"]
    assert "zz_y = 1\nzz_y = (" not in _worker._codes.entries


def test_long_sources_run_without_being_kept():
    long_code = "zz_long = 0\n" + "zz_long += 1\n" * (_worker.CODE_CACHE_ENTRY_CHARS // 12)
    assert len(long_code) > _worker.CODE_CACHE_ENTRY_CHARS
    for i in range(2):
        assert _execute(i, long_code)[0] == 0
        assert _worker.namespace["zz_long"] == _worker.CODE_CACHE_ENTRY_CHARS // 12
    assert long_code not in _worker._codes.entries
    assert all(len(key) < _worker.CODE_CACHE_ENTRY_CHARS for key in _worker._noarg_calls)


def test_the_code_cache_is_bounded_in_entries_and_characters(monkeypatch):
    monkeypatch.setattr(_worker, "CODE_CACHE_ENTRIES", 4)
    monkeypatch.setattr(_worker, "CODE_CACHE_CHARS", 100)
    cache = _worker._CodeCache()
    sources = [f"zz_{i} = {i}" for i in range(10)]  # 8-9 characters each
    for src in sources:
        cache.compiled(src)
        cache.compiled(sources[0])  # used again and again: kept
    assert len(cache.entries) == 4 and list(cache.entries)[-1] == sources[0]
    assert list(cache.entries)[:3] == sources[7:]  # the least recently used went first
    assert cache.chars == sum(len(s) for s in cache.entries)
    big = "zz_big = '" + "b" * 80 + "'"  # fits alone, not with all the others
    cache.compiled(big)
    assert big in cache.entries and cache.chars <= 100
    assert cache.chars == sum(len(s) for s in cache.entries)
    namespace = {}
    exec(cache.compiled(sources[3]), namespace)  # dropped, compiled again: still right
    assert namespace["zz_3"] == 3


def test_a_repeated_pull_reads_the_current_value_each_time():
    pull = _serialize.dumps(("pull", "zz_pulled"))
    _worker.namespace.pop("zz_pulled", None)
    for i in range(2):  # missing: the same remote NameError each time
        status, frames = _worker.run_task(i, list(pull))
        assert status == 1 and _result(frames)[1]["ename"] == "NameError"
    for i, value in enumerate([1, [2], "three"]):
        _worker.run_task(10 + i, _serialize.dumps(("push", {"zz_pulled": value})))
        assert _result(_worker.run_task(20 + i, list(pull))[1])[1] == value
    assert pull[0] in _worker._noarg_calls
    # A pushed value is unpickled afresh every time: a push is never a shortcut.
    push = _serialize.dumps(("push", {"zz_list": []}))
    _worker.run_task(30, list(push))
    _worker.namespace["zz_list"].append(1)
    _worker.run_task(31, list(push))
    assert _worker.namespace["zz_list"] == [] and push[0] not in _worker._noarg_calls


def test_small_values_come_back_with_their_own_value_and_type():
    # None, booleans and small ints have results made once; the others are
    # pickled per task.  False == 0 and True == 1, but each keeps its type.
    for i, value in enumerate([None, True, False, 0, 1, -8, 256, 257, -9, 0.0, 1.0, "", "x"]):
        payload = _serialize.dumps_apply(_identity, (value,), {})
        for j in range(2):  # the second time through the cached function
            status, frames = _worker.run_task(100 + 2 * i + j, list(payload))
            kind, got, stdout, stderr = _result(frames)
            assert (status, kind, stdout, stderr) == (0, "ok", "", "")
            assert got == value and type(got) is type(value)
        status, frames = _worker.run_task(200 + i, _serialize.dumps_call(
            _serialize.dumps_function(_constant(value)), (), {}))
        assert status == 0 and _result(frames)[1] == value and type(_result(frames)[1]) is type(value)


def _identity(x):
    return x


def _constant(value):
    return lambda: value
