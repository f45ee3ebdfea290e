"""A throwaway single-node SLURM cluster (munged + slurmctld + slurmd) on localhost.

Used by tests/test_jobscripts.py, and by hand::

    python jobscripts/ci/slurm_cluster.py up /tmp/slurm     # prints: export SLURM_CONF=...
    SLURM_CONF=/tmp/slurm/slurm.conf sbatch --wait jobscripts/single_node.sbatch
    python jobscripts/ci/slurm_cluster.py down /tmp/slurm

Needs root and Debian's ``slurm-wlm`` (22.05) and ``munge``.  Settings that work here
(docs/facts.md): proctrack/linuxproc, task/none, select/cons_tres with CR_Core, PMI-2 for srun
(the MPICH wheel speaks it), no accounting, and the node declared with more CPUs than it
has (``config_overrides``) so that a 4-task job fits on 2 cores.  Everything lives in one
directory; ``down`` stops the daemons (SIGTERM, then SIGKILL) and checks they are gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

CPUS = 8
MUNGE_PID = "/run/munge/munged.pid"

CONF = """\
ClusterName=mpray-ci
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmi2
ReturnToService=2
SchedulerType=sched/builtin
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
MaxJobCount=1000
InactiveLimit=0
KillWait=5
MinJobAge=30
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=60 State=UP OverSubscribe=YES
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids(d: str) -> list[int]:
    out = []
    files = [os.path.join(d, "slurmctld.pid"), os.path.join(d, "slurmd.pid")]
    if os.path.exists(os.path.join(d, "munge.started")):
        files.append(MUNGE_PID)
    for path in files:
        try:
            out.append(int(open(path).read().strip()))
        except (OSError, ValueError):
            pass
    return out


def up(d: str, timeout: float = 30.0) -> dict:
    """Start the cluster in directory ``d``; returns the environment to use it."""
    for tool in ("munged", "slurmctld", "slurmd", "sbatch"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: apt-get install slurm-wlm munge")
    os.makedirs(os.path.join(d, "state"), exist_ok=True)
    os.makedirs(os.path.join(d, "spool"), exist_ok=True)
    host = socket.gethostname()
    conf = os.path.join(d, "slurm.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(host=host, d=d, cpus=CPUS, ctld_port=_free_port(),
                            d_port=_free_port()))
    env = dict(os.environ, SLURM_CONF=conf)
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        os.makedirs("/run/munge", exist_ok=True)
        subprocess.run(["munged", "--force"], check=True, timeout=10)
        open(os.path.join(d, "munge.started"), "w").close()  # ours: down() stops it
    subprocess.run(["slurmctld", "-f", conf], check=True, timeout=20, env=env)
    subprocess.run(["slurmd", "-f", conf], check=True, timeout=20, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                           env=env, timeout=10)
        if r.returncode == 0 and r.stdout.strip() in ("idle", "mixed"):
            return {"SLURM_CONF": conf}
        time.sleep(0.3)
    down(d)
    raise RuntimeError(f"the SLURM node did not come up in {timeout} s; logs in {d}")


def down(d: str) -> None:
    """Stop the daemons started by ``up(d)`` (escalating to SIGKILL) and wait for them."""
    pids = _pids(d)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        if not any(_alive(p) for p in pids):
            return
    left = [p for p in pids if _alive(p)]
    if left:
        raise RuntimeError(f"SLURM daemons {left} would not stop")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        sys.exit("usage: slurm_cluster.py up|down DIR")
    if sys.argv[1] == "up":
        print(f"export SLURM_CONF={up(sys.argv[2])['SLURM_CONF']}")
    else:
        down(sys.argv[2])
