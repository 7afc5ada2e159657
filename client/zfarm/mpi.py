"""MPI inside tasks, for engines started with ``--engines mpi``.

The engine does not import mpi4py (nor start MPI) by itself: the first call
of :func:`comm` in a task does, so engines that never use MPI pay nothing.

>>> def total(x):                                        # doctest: +SKIP
...     from zfarm import mpi
...     return mpi.comm().allreduce(x)
>>> rc[:].apply_sync(lambda: __import__("zfarm").mpi.rank())   # doctest: +SKIP
[0, 1]
"""
from __future__ import annotations

import os
from typing import Any, Optional

# Where MPI launchers (and Slurm's srun) put the rank and size of a process.
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")


def _env_int(names) -> Optional[int]:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return None


def rank() -> Optional[int]:
    """This engine's rank in its MPI (or Slurm) job, from the environment; None outside one."""
    return _env_int(_RANK_VARS)


def size() -> Optional[int]:
    """The number of ranks in this engine's job, None outside one."""
    return _env_int(_SIZE_VARS)


def comm() -> Any:
    """``mpi4py.MPI.COMM_WORLD``; the first call imports mpi4py, which initialises MPI."""
    from mpi4py import MPI  # noqa: PLC0415 - lazily, only in tasks that use MPI

    return MPI.COMM_WORLD
