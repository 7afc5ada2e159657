"""The client's pickling shortcuts keep what cloudpickle would give."""
from __future__ import annotations

import math
import pickle

from zfarm import _serialize


def roundtrip(obj):
    return _serialize.loads(_serialize.dumps(obj))


def test_plain_values_round_trip_in_one_frame():
    value = ("apply", b"fn", (1, 2.5, "s", None, True, 3j), {"k": [1, (2, 3)]})
    frames = _serialize.dumps(value)
    assert len(frames) == 1
    assert roundtrip(value) == value


def test_values_beyond_the_plain_check_still_round_trip():
    big = list(range(_serialize.PLAIN_CHECK_BUDGET * 4))
    assert roundtrip(("map", b"fn", big)) == ("map", b"fn", big)
    f = roundtrip((lambda x: x + 1,))[0]
    assert f(1) == 2


def test_a_closure_is_pickled_again_each_call():
    box = [1]

    def f():
        return box[0]

    first = pickle.loads(_serialize.dumps_function(f))()
    box[0] = 2
    second = pickle.loads(_serialize.dumps_function(f))()
    assert (first, second) == (1, 2)


def test_a_bound_builtin_method_carries_its_current_object():
    items = [1]
    size = items.__len__
    assert pickle.loads(_serialize.dumps_function(size))() == 1
    items.append(2)
    assert pickle.loads(_serialize.dumps_function(size))() == 2


def test_callables_by_reference_are_pickled_once():
    assert _serialize.dumps_function(math.sqrt) is _serialize.dumps_function(math.sqrt)
    assert _serialize.dumps_function(int) is _serialize.dumps_function(int)
    assert pickle.loads(_serialize.dumps_function(math.sqrt))(9) == 3


def test_registering_a_module_by_value_empties_the_cache(monkeypatch):
    import types

    import cloudpickle

    module = types.ModuleType("zfarm_test_by_value")
    monkeypatch.setitem(__import__("sys").modules, module.__name__, module)
    exec("def f():\n    return 1\n", module.__dict__)
    module.f.__module__ = module.__name__
    by_reference = _serialize.dumps_function(module.f)
    assert _serialize.dumps_function(module.f) is by_reference
    cloudpickle.register_pickle_by_value(module)
    try:
        by_value = _serialize.dumps_function(module.f)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert by_value != by_reference
