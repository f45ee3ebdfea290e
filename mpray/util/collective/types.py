"""The collective API's types (as ``ray.util.collective.types``): reduce operations,
backends, errors, and the check every tensor passes before a collective touches it."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class ReduceOp(IntEnum):
    SUM = 0
    PRODUCT = 1
    MIN = 2
    MAX = 3


class Backend:
    """``auto`` (the default): ``shm`` when every member is on one host (and the machine is
    x86-64 Linux), else ``store``.  Ray's ``gloo`` (its CPU backend) means ``auto`` here;
    ``nccl`` is refused: mpray has no GPU collectives."""

    AUTO = "auto"
    SHM = "shm"
    STORE = "store"
    GLOO = "gloo"
    NCCL = "nccl"

    @classmethod
    def resolve(cls, backend) -> str:
        b = (str(getattr(backend, "value", backend) or cls.AUTO)).lower()
        if b in (cls.GLOO, "torch_gloo"):
            return cls.AUTO
        if b == cls.NCCL:
            raise ValueError("backend 'nccl': mpray has no GPU collectives; use 'auto' "
                             "(numpy arrays through shared memory or the object store)")
        if b not in (cls.AUTO, cls.SHM, cls.STORE):
            raise ValueError(f"unknown collective backend {backend!r}: use 'auto', 'shm' "
                             f"(members on one host) or 'store' (any members)")
        return b


class CollectiveError(RuntimeError):
    """A collective cannot complete: a member died, members disagree, no room."""


class CollectiveTimeoutError(CollectiveError):
    """A member waited past the group's timeout for another.  (Not also a TimeoutError:
    an OSError's layout would keep a RayTaskError from standing in for it.)"""


def check_tensor(t, what: str = "tensor", writable: bool = True) -> np.ndarray:
    """``t`` as the numpy array a collective reads (and, if ``writable``, writes)."""
    if not isinstance(t, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, not {type(t).__name__}")
    if t.dtype.kind not in "biufc":
        raise TypeError(f"{what} has dtype {t.dtype}: collectives take numeric arrays")
    if writable and not t.flags.writeable:
        raise ValueError(f"{what} is read-only (an array from ray.get is): collectives "
                         f"write their result into it; pass a copy")
    return t


def flat_view(t: np.ndarray) -> np.ndarray | None:
    """A 1-D view of ``t``'s memory, or None when ``t`` is not contiguous."""
    return t.reshape(-1) if t.flags.c_contiguous else None


def process_alive(pid: int) -> bool:
    """Is ``pid`` (a process of this host) running?  A zombie is not: its parent has not
    reaped it yet, but it will never answer."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # (another user's process: assume it runs)
        return True
