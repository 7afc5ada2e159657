"""zfarm: interactive parallel computing for Python on a ZeroMQ task farm.

>>> import zfarm                                  # doctest: +SKIP
>>> with zfarm.Cluster(n=2) as rc:                # doctest: +SKIP
...     rc.load_balanced_view().map_sync(abs, [-1, -2, -3])
[1, 2, 3]
"""
from ._asyncresult import AsyncResult
from ._client import Client
from ._cluster import Cluster
from ._errors import (
    CompositeError,
    EngineDiedError,
    NoEnginesError,
    RemoteError,
    TaskAborted,
    TaskFailure,
    TaskRejected,
    TaskTimedOut,
    TaskLost,
    ImpossibleDependency,
    TimeoutError,
    ZfarmError,
)
from ._executor import ZfarmExecutor
from ._reference import Reference
from ._view import DirectView, LoadBalancedView
from . import mpi  # rank and communicator inside tasks (mpi4py imported on first use)
from ._launchers import LocalLauncher, MPILauncher, SlurmLauncher, SSHLauncher
from ._profiles import cluster_status, start_cluster, stop_cluster

__version__ = "0.1.0"


def load_ipython_extension(shell):
    """``%load_ext zfarm``: adds %px, %%px, %autopx and %pxresult."""
    from ._magics import load_ipython_extension as load

    load(shell)


def register_joblib_backend(client=None, name="zfarm", make_default=False):
    """Registers the joblib backend ``name`` running on zfarm (needs joblib)."""
    from ._joblib import register_joblib_backend as register

    register(client, name=name, make_default=make_default)


__all__ = [
    "AsyncResult",
    "Client",
    "Cluster",
    "CompositeError",
    "DirectView",
    "EngineDiedError",
    "LoadBalancedView",
    "NoEnginesError",
    "Reference",
    "RemoteError",
    "TaskAborted",
    "TaskFailure",
    "TaskRejected",
    "TaskTimedOut",
    "TaskLost",
    "ImpossibleDependency",
    "TimeoutError",
    "ZfarmError",
    "ZfarmExecutor",
    "load_ipython_extension",
    "register_joblib_backend",
]
