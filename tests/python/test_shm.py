"""Large buffers through shared memory (/dev/shm) between processes of one host."""
from __future__ import annotations

import mmap
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import zfarm
from zfarm import _serialize, _shm
from zfarm._view import LoadBalancedView
from conftest import WAIT

pytestmark = pytest.mark.skipif(not os.path.isdir(_shm.SHM_DIR), reason="no /dev/shm on this system")

BIG = 1 << 20  # float64 items: 8 MiB, well above the shared-memory threshold


def wait_until_gone(pids, timeout: float = WAIT):
    """Waits (bounded) until no zfarm shared-memory file of ``pids`` exists; returns what is left."""
    deadline = time.monotonic() + timeout
    while True:
        left = [name for pid in pids for name in _shm.files_of(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def engine_pids(cluster):
    return [p.pid for p in cluster.engines]


def backed_by_shm(a) -> bool:
    """True if the numpy array ``a`` points into a mapped file."""
    while a is not None and not isinstance(a, mmap.mmap):
        a = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)
    return isinstance(a, mmap.mmap)


def on_engine():
    """A function (pickled by value) evaluating an expression in an engine's namespace."""

    def evaluate(expr):
        import zfarm._worker as w

        return eval(expr, w.namespace)

    return evaluate


@pytest.fixture()
def big():
    return np.arange(BIG, dtype=np.float64)


def shm_backed_on_engine():
    """A function (pickled by value) telling whether an engine's variable is a mapped file."""

    def check(name):
        import mmap

        import zfarm._worker as w

        a = w.namespace[name]
        while a is not None and not isinstance(a, mmap.mmap):
            a = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)
        return isinstance(a, mmap.mmap)

    return check


def test_push_goes_through_shared_memory_and_leaves_no_file(cluster, rc, big):
    me = os.getpid()
    assert _shm.files_of(me) == []
    rc[:].push({"a": big}, block=True)
    assert wait_until_gone([me]) == []
    sums = rc[:].apply_sync(on_engine(), "float(a.sum())")
    assert sums == [float(big.sum())] * 2
    assert rc[:].apply_sync(shm_backed_on_engine(), "a") == [True, True]


def test_pushed_arrays_are_writable_and_private_to_each_engine(rc, big):
    dv = rc[:]
    dv.push({"a": big}, block=True)

    def mark(value):
        import zfarm._worker as w

        a = w.namespace["a"]
        a[0] = value  # copy-on-write: touches only this engine's page
        return bool(a.flags.writeable)

    for eid in rc.ids:
        assert rc[eid].apply_sync(mark, 1000.0 + eid) is True
    firsts = dv.apply_sync(on_engine(), "float(a[0])")
    assert firsts == [1000.0 + eid for eid in rc.ids]
    assert dv.apply_sync(on_engine(), "float(a[1])") == [1.0, 1.0]
    assert big[0] == 0.0  # the client's array is untouched


def test_scatter_and_gather_round_trip_leave_no_file(cluster, rc, big):
    me = os.getpid()
    dv = rc[:]
    dv.scatter("x", big, block=True)
    back = dv.gather("x", block=True)
    assert np.array_equal(back, big)
    assert wait_until_gone([me] + engine_pids(cluster)) == []


def test_pull_and_apply_results_come_back_through_shared_memory(cluster, rc, big):
    rc[:].push({"a": big}, block=True)
    pulled = rc[rc.ids[0]].pull("a", block=True)
    assert np.array_equal(pulled, big)
    assert backed_by_shm(pulled)  # mapped from the engine's file, not copied from a frame
    pulled[0] = -1.0  # writable
    made = rc.load_balanced_view().apply_sync(np.full, BIG, 7.0)
    assert made.shape == (BIG,) and made[-1] == 7.0 and backed_by_shm(made)
    twice = rc[:].apply_sync(lambda x: x * 2, big)
    assert all(np.array_equal(t, big * 2) for t in twice)
    assert wait_until_gone([os.getpid()] + engine_pids(cluster)) == []


def test_small_buffers_stay_inline(rc):
    small = np.arange(1000, dtype=np.float64)  # 8 KB: inside the pickle
    medium = np.arange(_shm.SHM_MIN // 8 - 1, dtype=np.float64)  # out-of-band, below the threshold
    frames = _serialize.dumps(("push", {"s": small, "m": medium}))
    exported, names = _shm.export(frames, claim=False)
    assert names == [] and exported == frames
    assert not any(_shm.is_descriptor(f) for f in frames[1:])
    rc[:].push({"m": medium}, block=True)
    assert rc[:].apply_sync(shm_backed_on_engine(), "m") == [False, False]


def test_descriptor_for_a_missing_file_fails_with_a_clear_error(rc, big):
    frames, names = _shm.export(_serialize.dumps(("push", {"gone": big})), claim=False)
    assert len(names) == 1 and _shm.is_descriptor(frames[1])
    _shm.release(names)
    with pytest.raises(_shm.ShmError, match="cannot open the shared-memory buffer"):
        _serialize.loads(frames)
    # The same on an engine: the task fails, the engine lives on.
    eid = rc.ids[0]
    ar = zfarm.AsyncResult(rc, 1, single=True, label="push")
    rc._submit([([eid], frames, 0)], ar)
    with pytest.raises(zfarm.RemoteError, match="cannot open the shared-memory buffer"):
        ar.get(timeout=WAIT)
    assert rc[eid].apply_sync(lambda: "alive") == "alive"


def test_malformed_descriptors_are_refused():
    for name in ("../../etc/passwd", "zfarm-1-xyz", "/dev/shm/zfarm-1-0123456789abcdef"):
        frame = _shm.descriptor(name, 1 << 20, claim=False)
        assert _shm.is_descriptor(frame)
        with pytest.raises(_shm.ShmError, match="malformed"):
            _shm.open_descriptor(frame)
    # A real out-of-band frame is never taken for a descriptor, whatever it starts with.
    assert not _shm.is_descriptor(_shm.MAGIC + bytes(_serialize.OUT_OF_BAND_MIN))


def test_short_file_is_refused_rather_than_mapped(big):
    frames, names = _shm.export([b"", memoryview(big).cast("B")], claim=False)
    try:
        os.truncate(os.path.join(_shm.SHM_DIR, names[0]), 100)
        with pytest.raises(_shm.ShmError, match="holds 100 bytes"):
            _shm.open_descriptor(frames[1])
    finally:
        _shm.release(names)


def test_killed_engine_leaves_no_file_of_the_client(own_cluster, big):
    c = own_cluster(n=1)
    rc = c.connect(timeout=WAIT)
    try:
        me = os.getpid()
        eid = rc.ids[0]
        pid = rc[eid].apply_sync(os.getpid)
        running = rc[eid].execute("while True: pass")
        pushed = rc[eid].push({"a": big})  # queued behind the endless loop
        assert len(_shm.files_of(me)) == 1  # written at submission
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(zfarm.EngineDiedError):
            running.get(timeout=WAIT)
        with pytest.raises(zfarm.EngineDiedError):
            pushed.get(timeout=WAIT)
        assert wait_until_gone([me]) == []
    finally:
        rc.close()


def test_retried_task_can_still_read_its_buffer(own_cluster, big, tmp_path):
    c = own_cluster(n=2)
    rc = c.connect(timeout=WAIT)
    try:
        marker = str(tmp_path / "died-once")

        def die_once(a, marker):
            import os

            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # the first engine dies with the task
            return float(a.sum())

        lv = LoadBalancedView(rc, retries=1)
        assert lv.apply_sync(die_once, big, marker) == float(big.sum())
        assert wait_until_gone([os.getpid()]) == []
    finally:
        rc.close()


def test_stale_files_of_dead_processes_are_removed_on_cluster_start(own_cluster):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(WAIT)
    stale = os.path.join(_shm.SHM_DIR, f"zfarm-{gone.pid}-0123456789abcdef")
    mine = os.path.join(_shm.SHM_DIR, f"zfarm-{os.getpid()}-0123456789abcdef")
    for path in (stale, mine):
        with open(path, "wb") as f:
            f.write(b"x")
    try:
        own_cluster(n=1)
        assert not os.path.exists(stale)
        assert os.path.exists(mine)  # this process is alive: its files stay
    finally:
        for path in (stale, mine):
            if os.path.exists(path):
                os.unlink(path)


def test_round_trip_through_loads_without_a_cluster(big):
    frames, names = _shm.export(_serialize.dumps({"a": big, "b": b"x" * 10}), claim=True)
    assert len(names) == 1
    value = _serialize.loads(frames)  # claims (unlinks) the file
    assert _shm.files_of(os.getpid()) == []
    assert np.array_equal(value["a"], big) and value["a"].flags.writeable
    _shm.release(names)
    assert pickle.loads(pickle.dumps(value["b"])) == b"x" * 10


# -- gather of numpy arrays into one file ------------------------------------------------
def mapped_shm_files() -> list:
    """zfarm shared-memory files this process still maps (deleted or not)."""
    with open("/proc/self/maps") as f:
        return [line.split()[-2] if line.rstrip().endswith("(deleted)") else line.split()[-1]
                for line in f if "/dev/shm/zfarm-" in line]


def test_gather_writes_the_parts_into_one_mapped_file(cluster, rc, big):
    dv = rc[:]
    dv.scatter("x", big, block=True)
    back = dv.gather("x", block=True)
    assert back.dtype == big.dtype and back.shape == big.shape and back.flags.c_contiguous
    assert np.array_equal(back, big)
    assert backed_by_shm(back)  # the engines' file itself, not a concatenation
    back[0] = -1.0  # the result is writable
    assert wait_until_gone([os.getpid()] + engine_pids(cluster)) == []


def test_gather_of_uneven_2d_blocks_keeps_dtype_and_shape(rc):
    whole = np.arange(3 * (BIG // 4) * 3, dtype=np.int32).reshape(-1, 3)
    cut = len(whole) // 3
    a, b = rc.ids[:2]
    rc[a].push({"x": whole[:cut]}, block=True)
    rc[b].push({"x": whole[cut:]}, block=True)
    back = rc[[a, b]].gather("x", block=True)
    assert back.dtype == np.int32 and back.shape == whole.shape
    assert np.array_equal(back, whole) and backed_by_shm(back)


def test_gather_of_fortran_ordered_and_strided_parts(rc):
    dv = rc[:]
    whole = np.arange(BIG * 2, dtype=np.float64).reshape(-1, 4)
    dv.scatter("x", whole, block=True)
    dv.execute("import numpy as np; y = np.asfortranarray(x); z = x[:, ::2]", block=True)
    back = dv.gather("y", block=True)
    assert np.array_equal(back, whole) and back.flags.c_contiguous and backed_by_shm(back)
    assert np.array_equal(dv.gather("z", block=True), whole[:, ::2])


def test_gather_of_mixed_dtypes_or_shapes_falls_back_to_concatenation(rc, big):
    a, b = rc.ids[:2]
    rc[a].push({"x": big}, block=True)
    rc[b].push({"x": big.astype(np.float32)}, block=True)
    back = rc[[a, b]].gather("x", block=True)
    assert back.dtype == np.float64 and np.array_equal(back, np.concatenate([big, big]))
    assert not backed_by_shm(back)
    rc[b].push({"x": big.reshape(-1, 2)}, block=True)  # another trailing shape
    with pytest.raises(ValueError):
        rc[[a, b]].gather("x", block=True)


def test_gather_of_lists_and_small_arrays_is_unchanged(rc):
    dv = rc[:]
    dv.scatter("y", list(range(11)), block=True)
    assert dv.gather("y", block=True) == list(range(11))
    small = np.arange(100, dtype=np.int64)
    dv.scatter("s", small, block=True)
    back = dv.gather("s", block=True)
    assert back.dtype == small.dtype and np.array_equal(back, small)


def test_gather_sees_the_values_of_its_call_time_not_of_later_calls(rc, big):
    dv = rc[:]
    dv.scatter("x", big, block=True)
    ar = dv.gather("x")
    dv.execute("x *= 0")  # submitted after the gather: runs after both its steps
    assert np.array_equal(ar.get(WAIT), big)
    assert float(dv.gather("x", block=True).sum()) == 0.0


def test_gather_error_is_a_remote_error_and_leaves_no_file(cluster, rc, big):
    a, b = rc.ids[:2]
    rc[a].push({"only_a": big}, block=True)
    with pytest.raises(zfarm.RemoteError, match="only_a"):
        rc[[a, b]].gather("only_a", block=True)
    assert wait_until_gone([os.getpid()] + engine_pids(cluster)) == []


def test_gather_failing_while_writing_leaves_no_file(cluster, rc, big, monkeypatch):
    rc[:].scatter("x", big, block=True)

    def failing_part(name, file, offset, dtype, shape):
        raise OSError(f"cannot write {file}")

    monkeypatch.setattr(_shm, "gather_part", failing_part)
    with pytest.raises((zfarm.RemoteError, zfarm.CompositeError), match="cannot write zfarm-"):
        rc[:].gather("x", block=True)
    assert wait_until_gone([os.getpid()] + engine_pids(cluster)) == []


def test_deleting_the_gathered_array_unmaps_it(rc, big):
    import gc

    rc[:].scatter("x", big, block=True)
    before = set(mapped_shm_files())
    back = rc[:].gather("x", block=True)
    mine = set(mapped_shm_files()) - before
    assert backed_by_shm(back) and len(mine) == 1
    assert not os.path.exists(mine.pop())  # unlinked once mapped
    del back
    gc.collect()
    assert set(mapped_shm_files()) <= before


def test_gather_from_a_done_callback_does_not_block_the_receiver(rc, big):
    import concurrent.futures

    dv = rc[:]
    dv.scatter("x", big, block=True)
    inner: concurrent.futures.Future = concurrent.futures.Future()

    def on_done(_):
        try:
            inner.set_result(dv.gather("x"))  # on the receiver thread: must not wait there
        except BaseException as exc:  # noqa: BLE001 - reported through the future
            inner.set_exception(exc)

    dv.execute("pass").add_done_callback(on_done)
    assert np.array_equal(inner.result(WAIT).get(WAIT), big)
