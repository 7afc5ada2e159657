"""@view.remote, @view.parallel, view.wait and DirectView.sync_imports
against real engines."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import zfarm
from conftest import WAIT


def test_remote_on_a_direct_view_runs_on_every_engine(rc):
    @rc[:].remote(block=True)
    def pid_and(x):
        import os

        return os.getpid(), x * 2

    out = pid_and(21)
    assert [x for _, x in out] == [42, 42]
    assert len({pid for pid, _ in out}) == 2 and os.getpid() not in {pid for pid, _ in out}
    assert pid_and.__name__ == "pid_and"  # wrapped like the function


def test_remote_follows_the_view_block_flag_unless_given(rc):
    lv = rc.load_balanced_view()

    @lv.remote()
    def square(x):
        return x * x

    ar = square(7)  # the view does not block: an AsyncResult
    assert isinstance(ar, zfarm.AsyncResult) and ar.get(timeout=WAIT) == 49
    lv.block = True
    assert square(8) == 64
    assert lv.remote(block=False)(square.func)(9).get(timeout=WAIT) == 81


def test_remote_error_keeps_the_remote_traceback(rc):
    @rc.load_balanced_view().remote(block=True)
    def fails():
        raise ValueError("from the engine")

    with pytest.raises(zfarm.RemoteError) as info:
        fails()
    assert "from the engine" in str(info.value)


def test_parallel_on_a_direct_view_gives_each_engine_one_block(rc):
    @rc[:].parallel(block=True)
    def where(block):
        import os

        return [(os.getpid(), x) for x in block]

    out = where(range(10))
    assert [x for _, x in out] == list(range(10))  # joined in order
    pids = [pid for pid, _ in out]
    assert pids[:5] == [pids[0]] * 5 and pids[5:] == [pids[5]] * 5 and pids[0] != pids[5]
    # .map calls it per item instead of per block (one item per engine here).
    assert where.map([[1], [2, 3]]) == [[(pids[0], 1)], [(pids[5], 2), (pids[5], 3)]]


def test_parallel_on_a_load_balanced_view_joins_blocks_in_order(rc):
    lv = rc.load_balanced_view()

    @lv.parallel()
    def double(xs, ys):
        return [x * 2 + y for x, y in zip(xs, ys)]

    ar = double(range(100), range(1000, 1100))  # the shorter length counts
    assert isinstance(ar, zfarm.AsyncResult)
    assert ar.get(timeout=WAIT) == [x * 2 + 1000 + x for x in range(100)]
    assert len(ar.task_ids) == 16  # 2 engines x the default 8 chunks each


def test_parallel_keeps_numpy_blocks_as_arrays(rc):
    @rc[:].parallel(block=True)
    def scale(a):
        return a * 10

    out = scale(np.arange(6.0))
    assert isinstance(out, np.ndarray) and out.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]


def test_view_wait_waits_for_the_given_results(rc):
    lv = rc.load_balanced_view()
    ars = [lv.apply_async(pow, 2, i) for i in range(20)]
    assert lv.wait(ars, timeout=WAIT)
    assert all(ar.ready() for ar in ars)
    assert rc[:].wait(timeout=WAIT)  # nothing outstanding any more


def test_sync_imports_runs_the_blocks_imports_on_the_engines(rc, capsys):
    dv = rc[:]
    dv.execute("import sys\nsys.modules.pop('colorsys', None); sys.modules.pop('fractions', None)", block=True)
    with dv.sync_imports():
        import colorsys
        from fractions import Fraction
    assert "importing colorsys on engine(s)" in capsys.readouterr().out
    assert colorsys.__name__ == "colorsys" and Fraction(1, 2) == 0.5  # imported here too
    # The names exist in the engines' namespace (execute sees no test globals).
    dv.execute("x = Fraction(3, 4)\ny = colorsys.rgb_to_hsv(1.0, 0.0, 0.0)", block=True)
    assert dv.pull(["x", "y"], block=True) == [[Fraction(3, 4), (0.0, 1.0, 1.0)]] * 2


def test_sync_imports_local_false_imports_only_on_the_engines(rc):
    dv = rc[:]
    dv.execute("import sys, types\nsys.modules['zfarm_only_remote'] = types.ModuleType('zfarm_only_remote')",
               block=True)
    with dv.sync_imports(local=False, quiet=True):
        import zfarm_only_remote  # noqa: F401 - exists on the engines only
    assert "zfarm_only_remote" not in sys.modules
    dv.execute("name = zfarm_only_remote.__name__", block=True)  # bound in the engines' namespace
    assert dv.pull("name", block=True) == ["zfarm_only_remote"] * 2


def test_sync_imports_copies_only_the_blocks_own_imports(rc, capsys):
    dv = rc[:]
    for name in [m for m in sys.modules if m == "tomllib" or m.startswith("tomllib.")]:
        del sys.modules[name]
    with dv.sync_imports():
        import tomllib  # runs tomllib's own imports here; those are not copied
    assert capsys.readouterr().out.splitlines() == ["importing tomllib on engine(s)"]
    assert tomllib.loads("a = 1") == {"a": 1}
    dv.execute("b = tomllib.loads('b = 2')", block=True)
    assert dv.pull("b", block=True) == [{"b": 2}, {"b": 2}]
