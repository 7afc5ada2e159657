"""A joblib parallel backend: ``n_jobs`` work runs on zfarm engines.

>>> import joblib, zfarm                                        # doctest: +SKIP
>>> zfarm.register_joblib_backend(rc)                           # doctest: +SKIP
>>> with joblib.parallel_backend("zfarm"):                      # doctest: +SKIP
...     joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(3))
[0, 1, 2]

scikit-learn's ``n_jobs`` goes through joblib, so ``cross_val_score(...,
n_jobs=2)`` inside that ``with`` block fits its folds on the engines.

Each joblib batch is one load-balanced task.  A batch that raises comes back
as :class:`zfarm.RemoteError` (the remote type, message and traceback are in
it), not as the original exception type.  Nested ``Parallel`` calls inside a
task run sequentially on that engine.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from joblib import register_parallel_backend
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, SequentialBackend

from ._asyncresult import _in_delivery

_lock = threading.Lock()
_registered_client: Any = None  # from register_joblib_backend(client)
_default_client: Any = None  # made on first use when no client was given


def _client_for(client: Any) -> Any:
    global _default_client
    if client is not None:
        return client
    if _registered_client is not None and not _registered_client.closed:
        return _registered_client
    with _lock:
        if _default_client is None or _default_client.closed:
            from ._client import Client

            # $ZFARM_CONNECTION_FILE, or a local cluster stopped at exit.
            _default_client = Client()
        return _default_client


class ZfarmBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend submitting each batch of calls as one zfarm task.

    ``client`` (a :class:`zfarm.Client`) defaults to the one given to
    :func:`register_joblib_backend`, else to ``zfarm.Client()``.
    ``n_jobs=-1`` means one job per registered engine.
    """

    supports_retrieve_callback = True
    supports_timeout = True
    supports_return_generator = True
    uses_threads = False
    supports_sharedmem = False

    def __init__(self, client: Any = None, nesting_level: Optional[int] = None, **kwargs: Any):
        super().__init__(nesting_level=nesting_level, **kwargs)
        self._client = client
        self._view: Any = None
        self._engines = 1

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client_for(None)
        return self._client

    def _count_engines(self) -> int:
        # The thread delivering results (the receiver, or one waiting in
        # get()) runs joblib's completion callbacks and must not wait for a
        # status reply it would itself have to deliver.
        if not _in_delivery():
            self._engines = max(1, len(self.client.ids))
        return self._engines

    def effective_n_jobs(self, n_jobs: int) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = -1
        if n_jobs < 0:
            return max(self._count_engines() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        self.parallel = parallel
        self._view = self.client.load_balanced_view()
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Callable[[], Any], callback: Optional[Callable[[Any], None]] = None) -> Any:
        if self._view is None:
            self._view = self.client.load_balanced_view()
        ar = self._view.apply_async(func)
        if callback is not None:
            ar.add_done_callback(callback)
        return ar

    def retrieve_result_callback(self, out: Any) -> Any:
        return out.get()

    def get_nested_backend(self):
        level = (self.nesting_level or 0) + 1
        return SequentialBackend(nesting_level=level), None


def register_joblib_backend(client: Any = None, name: str = "zfarm", make_default: bool = False) -> None:
    """Makes ``joblib.parallel_backend(name)`` run on zfarm.

    ``client`` is the cluster to use (default: ``zfarm.Client()`` on first
    use, i.e. $ZFARM_CONNECTION_FILE or a local cluster).  A client can also
    be given per block: ``joblib.parallel_backend("zfarm", client=rc)``.
    """
    global _registered_client
    _registered_client = client
    register_parallel_backend(name, ZfarmBackend, make_default=make_default)
