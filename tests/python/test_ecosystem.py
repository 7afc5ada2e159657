"""zfarm where other libraries expect a pool: concurrent.futures code, joblib
and scikit-learn's n_jobs."""
from __future__ import annotations

import concurrent.futures
import os
import sys

import cloudpickle
import pytest

from conftest import WAIT

import zfarm

# Engines cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x):
    return x * x


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def wait_for_flag(path, limit):
    # Blocks until ``path`` exists (made by the test) or ``limit`` seconds pass.
    import time

    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


# -- rc.executor() as a concurrent.futures.Executor ---------------------------------
def test_executor_is_an_executor_and_works_with_as_completed(rc):
    with rc.executor() as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        futures = {ex.submit(square, i): i for i in range(10)}
        seen = {}
        for fut in concurrent.futures.as_completed(futures, timeout=WAIT):
            seen[futures[fut]] = fut.result()
        assert seen == {i: i * i for i in range(10)}
        done, not_done = concurrent.futures.wait(list(futures), timeout=WAIT,
                                                 return_when=concurrent.futures.ALL_COMPLETED)
        assert not not_done


def test_executor_map_with_timeout(rc, tmp_path):
    flag = str(tmp_path / "go")
    with rc.executor() as ex:
        assert list(ex.map(square, range(6), timeout=WAIT)) == [0, 1, 4, 9, 16, 25]
        assert list(ex.map(pow, [2, 3], [3, 2], timeout=WAIT)) == [8, 9]
        # Tasks that cannot finish before the timeout: the iterator raises
        # concurrent.futures.TimeoutError, as code written for any executor expects.
        results = ex.map(wait_for_flag, [flag], [WAIT], timeout=0.2)
        with pytest.raises(concurrent.futures.TimeoutError):
            list(results)
        open(flag, "w").close()  # let the engine go


def test_executor_errors_and_shutdown(rc):
    ex = rc.executor()
    fut = ex.submit(fail_on, 3, 3)
    with pytest.raises(zfarm.RemoteError) as info:
        fut.result(WAIT)
    assert info.value.ename == "ValueError"
    assert isinstance(fut.exception(WAIT), zfarm.RemoteError)
    ex.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)
    with pytest.raises(RuntimeError):
        ex.map(square, [1])


def test_executor_context_manager_waits_for_submitted_work(rc):
    with rc.executor() as ex:
        futures = [ex.submit(square, i) for i in range(4)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 4, 9]


def test_executor_shutdown_waits_for_and_cancels_map_work(rc, tmp_path):
    flag = str(tmp_path / "go")
    ex = rc.executor()
    mapped = ex.map(square, range(5))
    ex.shutdown(wait=True)
    assert rc.outstanding == 0  # the map ended before shutdown returned
    assert list(mapped) == [0, 1, 4, 9, 16]
    ex = rc.executor()
    blocked = rc[:].apply_async(wait_for_flag, flag, WAIT)  # holds every engine
    queued = ex.map(square, range(200), chunksize=1)
    ex.shutdown(wait=False, cancel_futures=True)
    open(flag, "w").close()
    assert blocked.get(WAIT) == [True, True]
    with pytest.raises(zfarm.TaskAborted):
        list(queued)  # its queued tasks were aborted, not left to run


# -- joblib ----------------------------------------------------------------------------
joblib = pytest.importorskip("joblib")


def test_joblib_parallel_runs_on_engines(rc):
    zfarm.register_joblib_backend(rc)
    engine_pids = set(rc[:].apply_sync(os.getpid))
    with joblib.parallel_backend("zfarm"):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(20))
        pids = joblib.Parallel(n_jobs=-1)(joblib.delayed(os.getpid)() for _ in range(8))
    assert out == [i * i for i in range(20)]
    assert set(pids) <= engine_pids
    assert os.getpid() not in pids


def test_joblib_backend_with_client_per_block_and_generator_output(rc):
    with joblib.parallel_backend("zfarm", client=rc):
        gen = joblib.Parallel(n_jobs=2, return_as="generator_unordered")(
            joblib.delayed(square)(i) for i in range(12))
        assert sorted(gen) == [i * i for i in range(12)]
        assert joblib.effective_n_jobs(-1) == len(rc.ids)


def test_joblib_remote_exception_reaches_the_caller(rc):
    with joblib.parallel_backend("zfarm", client=rc):
        with pytest.raises(zfarm.RemoteError) as info:
            joblib.Parallel(n_jobs=2)(joblib.delayed(fail_on)(i, 5) for i in range(10))
    assert "bad item 5" in str(info.value)
    # The cluster still works after the aborted call.
    assert rc.load_balanced_view().apply_sync(square, 3) == 9


def test_scikit_learn_n_jobs_runs_on_zfarm(rc):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=300)
    local = cross_val_score(model, X, y, cv=4, n_jobs=1)
    before = rc.queue_status()["done"]
    with joblib.parallel_backend("zfarm", client=rc):
        remote = cross_val_score(model, X, y, cv=4, n_jobs=2)
    assert list(remote) == pytest.approx(list(local))
    assert rc.queue_status()["done"] > before  # the folds ran as zfarm tasks
