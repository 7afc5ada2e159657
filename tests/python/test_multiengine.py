"""The multiengine interface (DirectView) against real processes."""
from __future__ import annotations

import os

import numpy as np
import pytest

import zfarm
from conftest import WAIT


def test_ids_are_the_registered_engines(rc):
    assert rc.ids == sorted(rc.ids)
    assert len(rc.ids) == 2
    assert len(rc[:]) == 2
    assert rc[::2].targets == rc.ids[::2]
    assert rc[0].targets == 0


def test_execute_defines_names_in_each_engine(rc):
    dv = rc[:]
    assert dv.execute("import math\ny = math.factorial(5)").get(timeout=WAIT) == [None, None]
    assert dv.pull("y").get(timeout=WAIT) == [120, 120]


def test_each_engine_is_its_own_process(rc):
    pids = rc[:].apply_sync(os.getpid)
    assert len(set(pids)) == 2
    assert os.getpid() not in pids


def test_push_pull_and_item_syntax(rc):
    dv = rc[:]
    dv["a"] = 5
    assert dv["a"] == [5, 5]
    dv.push({"b": "text", "c": [1, 2]}, block=True)
    assert dv.pull(["b", "c"], block=True) == [["text", [1, 2]], ["text", [1, 2]]]
    assert rc[0]["a"] == 5  # a single target gives a single value


def test_pull_of_a_missing_name_is_a_remote_error(rc):
    with pytest.raises(zfarm.RemoteError) as info:
        rc[0].pull("not_defined_anywhere", block=True)
    assert info.value.ename == "NameError"
    assert info.value.engine_id == 0


def test_apply_with_arguments_on_all_and_on_one(rc):
    def add(x, y=0):
        return x + y

    assert rc[:].apply_sync(add, 1, y=2) == [3, 3]
    assert rc[1].apply_sync(add, 10) == 10


def test_apply_returns_engine_ids_and_stdout(rc):
    def shout():
        print("hello from an engine")
        return 1

    ar = rc[:].apply_async(shout)
    assert ar.get(timeout=WAIT) == [1, 1]
    assert sorted(ar.engine_id) == rc.ids
    assert ar.stdout == ["hello from an engine\n"] * 2


def test_targeted_work_runs_in_submission_order(rc):
    e = rc[0]
    e.execute("order = []", block=True)
    ars = [e.execute(f"order.append({i})") for i in range(50)]
    for ar in ars:
        ar.get(timeout=WAIT)
    assert e.pull("order", block=True) == list(range(50))


def test_scatter_gather_list(rc):
    dv = rc[:]
    dv.scatter("part", list(range(11)), block=True)
    parts = dv.pull("part", block=True)
    assert parts == [list(range(6)), list(range(6, 11))]  # contiguous blocks
    assert dv.gather("part", block=True) == list(range(11))


def test_scatter_gather_numpy_round_trip(rc):
    dv = rc[:]
    data = np.arange(1_000_001, dtype=np.float64).reshape(-1) * 0.5
    dv.scatter("x", data, block=True)
    assert [len(p) for p in dv.pull("x", block=True)] == [500_001, 500_000]
    dv.execute("x2 = x * 2", block=True)
    back = dv.gather("x2", block=True)
    assert isinstance(back, np.ndarray)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, data * 2)


def test_push_and_pull_a_large_numpy_array(rc):
    arr = np.random.default_rng(1).integers(0, 1000, size=(500, 400), dtype=np.int32)
    rc[:].push({"m": arr}, block=True)
    for got in rc[:].pull("m", block=True):
        np.testing.assert_array_equal(got, arr)
        assert got.dtype == np.int32 and got.shape == (500, 400)


def test_pushed_and_pulled_arrays_are_ordinary_writable_arrays(rc):
    arr = np.zeros(200_000, dtype=np.int64)  # large enough to travel out of band
    dv = rc[:]
    dv.push({"w": arr}, block=True)
    dv.execute("w += 7; ok = bool(w.flags.writeable)", block=True)
    assert dv.pull("ok", block=True) == [True, True]
    for got in dv.pull("w", block=True):
        assert got.flags.writeable
        got[0] = -1  # the client can update what it pulled
        assert got[0] == -1 and got[1] == 7
    np.testing.assert_array_equal(arr, 0)  # the original was not touched


def test_direct_map_spreads_blocks_over_engines(rc):
    out = rc[:].map_sync(lambda a, b: a * b, range(9), range(100, 109))
    assert out == [a * b for a, b in zip(range(9), range(100, 109))]


def test_remote_exception_carries_the_traceback(rc):
    def fails():
        raise ValueError("bad value 42")

    with pytest.raises(zfarm.RemoteError) as info:
        rc[0].apply_sync(fails)
    err = info.value
    assert err.ename == "ValueError"
    assert err.evalue == "bad value 42"
    assert "fails" in err.traceback
    assert "Traceback" in err.traceback


def test_errors_from_several_engines_come_together(rc):
    with pytest.raises(zfarm.CompositeError) as info:
        rc[:].execute("1/0", block=True)
    errors = info.value.errors
    assert len(errors) == 2
    assert {e.engine_id for e in errors} == set(rc.ids)
    assert all(e.ename == "ZeroDivisionError" for e in errors)


def test_the_same_code_again_runs_again_and_fails_again_alike(rc):
    dv = rc[:]
    dv.execute("me_runs = 0", block=True)
    ars = [dv.execute("me_runs += 1") for _ in range(5)]
    assert [ar.get(timeout=WAIT) for ar in ars] == [[None, None]] * 5
    assert dv.pull("me_runs", block=True) == [5, 5]
    for _ in range(2):
        with pytest.raises(zfarm.CompositeError) as info:
            dv.execute("def me_fail():\n    return me_undefined\nme_fail()", block=True)
        assert [e.ename for e in info.value.errors] == ["NameError", "NameError"]
        for e in info.value.errors:
            assert 'File "<zfarm-execute>", line 2, in me_fail' in e.traceback
            assert 'File "<zfarm-execute>", line 3, in <module>' in e.traceback
        with pytest.raises(zfarm.CompositeError) as info:
            dv.execute("me_ok = 1\nme_bad = )", block=True)
        assert [e.ename for e in info.value.errors] == ["SyntaxError", "SyntaxError"]
        assert all("line 2" in e.evalue for e in info.value.errors)


def test_a_list_result_ends_once_for_waiters_and_callbacks(rc):
    dv = rc[:]
    called = []
    ar = dv.apply_async(os.getpid)
    ar.add_done_callback(lambda f: called.append(f.result()))
    pids = ar.get(timeout=WAIT)
    assert len(set(pids)) == 2 and ar.successful()
    ar.add_done_callback(lambda f: called.append(f.result()))
    assert called == [pids, pids]
    # One engine fails: the list is not made, the error is.
    failing = dv.apply_async(lambda: 1 / (os.getpid() - min(pids)))
    with pytest.raises(zfarm.RemoteError) as info:
        failing.get(timeout=WAIT)
    assert info.value.ename == "ZeroDivisionError" and failing.progress == 2


def test_reset_and_keys(rc):
    dv = rc[:]
    dv["k1"] = 1
    assert all("k1" in keys for keys in dv.keys(block=True))
    dv.reset(block=True)
    assert dv.keys(block=True) == [[], []]


def test_unknown_engine_index_is_an_error(rc):
    with pytest.raises(IndexError):
        rc[99]


def test_reference_arguments_are_the_engines_own_variables(rc):
    dv = rc[:]
    dv.scatter("part", list(range(10)), block=True)
    assert dv.apply_sync(sum, zfarm.Reference("part")) == [10, 35]  # each engine its own block
    dv.push({"arr": np.zeros((3, 4))}, block=True)
    assert dv.apply_sync(lambda shape, k=None: (shape, k), zfarm.Reference("arr.shape"),
                         k=zfarm.Reference("part")) == [((3, 4), [0, 1, 2, 3, 4]), ((3, 4), [5, 6, 7, 8, 9])]
    # Load-balanced tasks resolve it on whichever engine runs them.
    lv = rc.load_balanced_view()
    got = lv.map_sync(lambda r: r, [zfarm.Reference("part")] * 4, chunksize=1)
    assert len(got) == 4 and all(r in ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9]) for r in got)
    # In pushed values too: a name made from another engine variable.
    dv.push({"alias": zfarm.Reference("part")}, block=True)
    assert dv.pull("alias", block=True) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_reference_to_a_missing_name_fails_the_task_with_name_error(rc):
    with pytest.raises(zfarm.CompositeError) as info:
        rc[:].apply_sync(len, zfarm.Reference("not_there"))
    assert "NameError" in str(info.value) and "not_there" in str(info.value)
    with pytest.raises(ValueError):
        zfarm.Reference("1bad")
    with pytest.raises(ValueError):
        zfarm.Reference("a..b")
    assert zfarm.Reference("a.b") == zfarm.Reference("a.b") and repr(zfarm.Reference("x")) == "Reference('x')"
