"""Payload frames: a pickle (protocol 5) and its out-of-band buffers.

The first frame is the pickle; every large contiguous buffer (a numpy array's
data, a bytes object reached through ``pickle.PickleBuffer``) travels as a
frame of its own, so it is never copied into the pickle stream.  Between
processes of one host the largest of them may instead travel through shared
memory (:mod:`zfarm._shm`); :func:`loads` accepts both.

>>> frames = dumps({"a": 1})
>>> loads(frames)
{'a': 1}
"""
from __future__ import annotations

import pickle
from typing import Any, List, Sequence

import cloudpickle

from . import _shm

PROTOCOL = 5
# Buffers smaller than this stay inside the pickle: a frame of its own costs
# more than copying a few kilobytes.
OUT_OF_BAND_MIN = 64 * 1024


def _splitter(frames: List[Any]):
    def callback(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        if view.nbytes < OUT_OF_BAND_MIN:
            return True  # serialise in-band
        frames.append(view)
        return False

    return callback


def dumps(obj: Any) -> List[Any]:
    """Pickle ``obj`` into a list of frames (bytes, then memoryviews).

    cloudpickle pickles by value what the other side could not import
    (lambdas, closures, functions and classes of ``__main__`` or of an
    engine's namespace); everything else goes by reference as plain pickle.
    """
    frames: List[Any] = [b""]
    frames[0] = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=_splitter(frames))
    return frames


def dumps_function(obj: Any) -> bytes:
    """Pickle a callable by value when needed (cloudpickle), once."""
    return cloudpickle.dumps(obj, protocol=PROTOCOL)


def loads(frames: Sequence[Any]) -> Any:
    """Inverse of :func:`dumps`; frames may be any buffer-protocol objects.

    A buffer sent through shared memory (a descriptor frame, see
    :mod:`zfarm._shm`) is mapped copy-on-write and unpickled from there.
    """
    return pickle.loads(frames[0], buffers=_shm.import_buffers(frames[1:]))
