"""Launcher detection: is this process one rank of an MPI (or ``srun``) job?

Only environment variables are read: mpi4py is imported by ``mpray_mpi.start`` once we
know it is needed, so single-host mpray never touches MPI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

# (rank, size, local size) variables of the launchers we know, most specific first
_LAUNCHERS = (
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"),  # MPICH hydra, Intel MPI
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_SIZE"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE"),
    ("PALS_RANKID", "PALS_SIZE", "PALS_LOCAL_SIZE"),
    ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_TASKS_PER_NODE"),  # srun
)


@dataclass(frozen=True)
class Launch:
    rank: int
    size: int
    local_size: int
    via: str  # the variable that told us


def _int(v: str | None) -> int | None:
    if v is None:
        return None
    try:
        return int(v.split("(")[0].split(",")[0])  # SLURM: "2(x3),1" -> 2
    except ValueError:
        return None


def detect(env: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process is part of, or None for a plain single-host run.

    ``MPRAY_BACKEND=local`` forces single-host mode; ``MPRAY_BACKEND=mpi`` forces the MPI
    backend even for one rank. A job of one rank runs as a single host.
    """
    env = os.environ if env is None else env
    backend = (env.get("MPRAY_BACKEND") or "").strip().lower()
    if backend not in ("", "local", "mpi", "auto"):
        raise ValueError(f"MPRAY_BACKEND={backend!r}: use 'local', 'mpi' or 'auto'")
    if backend == "local":
        return None
    for rank_var, size_var, local_var in _LAUNCHERS:
        rank, size = _int(env.get(rank_var)), _int(env.get(size_var))
        if rank is None or size is None:
            continue
        local = (_int(env.get(local_var)) or _int(env.get("SLURM_STEP_TASKS_PER_NODE"))
                 or _int(env.get("SLURM_NTASKS_PER_NODE")) or 1)
        if size > 1 or backend == "mpi":
            return Launch(rank, size, max(1, local), rank_var)
        return None
    if backend == "mpi":
        return Launch(0, 1, 1, "MPRAY_BACKEND")
    return None
