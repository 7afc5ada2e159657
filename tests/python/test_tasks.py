"""The task interface (LoadBalancedView), futures and the executor."""
from __future__ import annotations

import asyncio
import concurrent.futures
import os

import pytest

import zfarm
from conftest import WAIT


def test_load_balanced_apply_of_a_closure(rc):
    offset = 1000

    def shifted(x):
        return x + offset

    lv = rc.load_balanced_view()
    ar = lv.apply_async(shifted, 5)
    assert ar.get(timeout=WAIT) == 1005
    assert ar.engine_id in rc.ids


def test_lambda_and_keyword_arguments(rc):
    lv = rc.load_balanced_view()
    assert lv.apply_sync(lambda a, *, b: a - b, 10, b=3) == 7


def test_map_larger_than_the_engine_count(rc):
    lv = rc.load_balanced_view()
    data = list(range(1000))
    ar = lv.map(lambda x: x * x, data, chunksize=7)
    assert ar.get(timeout=WAIT) == [x * x for x in data]
    assert len(ar) == len(range(0, 1000, 7))  # one task per chunk


class _Squares:
    """A sequence type the engines cannot import (defined in a test module)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [x * x for x in range(*i.indices(self.n))]
        return i * i


@pytest.mark.parametrize("view", ["direct", "balanced"])
def test_map_of_one_sequence_gives_each_item_whole_whatever_its_type(rc, view):
    import numpy as np

    v = rc[:] if view == "direct" else rc.load_balanced_view()
    kw = {} if view == "direct" else {"chunksize": 3}
    cases = [
        (range(10), list(range(10))),
        ([(1, 2), (3, 4), (5, 6)], [(1, 2), (3, 4), (5, 6)]),  # tuples stay single arguments
        ("abcde", list("abcde")),
        (b"xyz", list(b"xyz")),
        ((None, "a", 2.5), [None, "a", 2.5]),
        (_Squares(7), [x * x for x in range(7)]),
    ]
    for seq, items in cases:
        assert v.map(lambda x: x, seq, block=True, **kw) == items, seq
    rows = np.arange(12).reshape(6, 2)
    got = v.map(lambda r: (type(r).__name__, r.tolist()), rows, block=True, **kw)
    assert got == [("ndarray", r) for r in rows.tolist()]
    got = v.map(lambda x: type(x).__name__, np.arange(5), block=True, **kw)
    assert got == ["int64"] * 5
    assert v.map(lambda x: x, (i for i in range(4)), block=True, **kw) == [0, 1, 2, 3]  # any iterable
    assert v.map(lambda a, b: a * b, range(5), "abc", block=True, **kw) == ["", "b", "cc"]  # zipped


def test_map_with_default_chunks_uses_every_engine(rc):
    import time

    def slow_pid(x):
        time.sleep(0.01)
        return os.getpid()

    ar = rc.load_balanced_view().map(slow_pid, range(64))
    pids = ar.get(timeout=WAIT)
    assert len(pids) == 64
    assert len(set(pids)) == 2


def test_unordered_map_returns_every_result_once(rc):
    ar = rc.load_balanced_view().map(lambda x: -x, range(200), chunksize=3, ordered=False)
    got = ar.get(timeout=WAIT)
    assert sorted(got) == sorted(-x for x in range(200))


def test_iterating_a_map_yields_items_in_order(rc):
    ar = rc.load_balanced_view().map(str, range(30), chunksize=4)
    assert list(ar) == [str(i) for i in range(30)]


def test_ten_thousand_load_balanced_tasks(rc):
    lv = rc.load_balanced_view()
    ars = [lv.apply_async(pow, i, 2) for i in range(10_000)]
    results = [ar.get(timeout=WAIT) for ar in ars]
    assert results == [i * i for i in range(10_000)]
    assert rc.outstanding == 0


def test_remote_exception_from_a_load_balanced_task(rc):
    def broken(x):
        return {}[x]

    with pytest.raises(zfarm.RemoteError) as info:
        rc.load_balanced_view().apply_sync(broken, "missing")
    assert info.value.ename == "KeyError"
    assert "broken" in info.value.traceback


def test_map_with_one_failing_item_raises(rc):
    def inv(x):
        return 1 / x

    with pytest.raises(zfarm.RemoteError) as info:
        rc.load_balanced_view().map_sync(inv, [1, 2, 0, 4], chunksize=1)
    assert info.value.ename == "ZeroDivisionError"


def test_async_result_is_a_future(rc):
    lv = rc.load_balanced_view()
    ars = [lv.apply_async(lambda i=i: i) for i in range(20)]
    assert all(isinstance(a, concurrent.futures.Future) for a in ars)
    done = {f.result() for f in concurrent.futures.as_completed(ars, timeout=WAIT)}
    assert done == set(range(20))
    assert ars[0].ready() and ars[0].wait(0)


def test_async_result_is_awaitable(rc):
    lv = rc.load_balanced_view()

    async def main():
        return await asyncio.wait_for(asyncio.gather(lv.apply_async(abs, -3), lv.apply_async(abs, -4)), WAIT)

    assert asyncio.run(main()) == [3, 4]


def test_get_with_a_timeout_raises_zfarm_timeout(rc):
    ar = rc[0].execute("import time; time.sleep(2)")
    with pytest.raises(zfarm.TimeoutError):
        ar.get(timeout=0.01)
    assert ar.get(timeout=WAIT) is None


def test_executor_submit_and_map(rc):
    with rc.executor() as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        fut = ex.submit(divmod, 17, 5)
        assert fut.result(timeout=WAIT) == (3, 2)
        assert list(ex.map(abs, [-1, -2, -3], timeout=WAIT)) == [1, 2, 3]
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)


def test_wait_interactive_shows_progress_and_finishes(rc, capsys):
    ar = rc.load_balanced_view().map(abs, range(-50, 0), chunksize=5)
    assert ar.wait_interactive(interval=0.05, timeout=WAIT)
    assert ar.get() == list(range(50, 0, -1))
    err = capsys.readouterr().err
    assert "10/10" in err


def test_wall_time_is_known_once_every_task_ended_and_elapsed_stops_there(rc, tmp_path):
    from conftest import gated

    gate = str(tmp_path / "gate")
    ar = rc.load_balanced_view().map(gated, [1, 2, 3], [gate] * 3, chunksize=1)
    assert ar.wall_time is None and not ar.ready()
    running = ar.elapsed
    assert running >= 0
    open(gate, "w").close()
    assert ar.get(timeout=WAIT) == [1, 4, 9]
    wall = ar.wall_time
    assert wall is not None and running <= wall
    assert ar.elapsed == wall  # no longer grows
    one = rc.load_balanced_view().apply_async(int)
    one.get(timeout=WAIT)
    assert 0 < one.wall_time == one.elapsed
