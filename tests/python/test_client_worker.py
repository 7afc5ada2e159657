"""The engine's Python half (zfarm._worker.run_task) called directly: the
shortcut for repeated calls without arguments keeps every task's own output,
error and result."""
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
    # A task that printed: its output comes back, and its captures are not reused.
    printed = _worker.run_task(5, _serialize.dumps(("execute", "print('hi')")))
    assert _result(printed[1])[2] == "hi\n"
