"""A throwaway SLURM cluster (munged + slurmctld + one or two slurmd) on localhost.

Used by tests/test_jobscripts.py, and by hand::

    python jobscripts/ci/slurm_cluster.py up /tmp/slurm     # prints: export SLURM_CONF=...
    SLURM_CONF=/tmp/slurm/slurm.conf sbatch --wait jobscripts/single_node.sbatch
    python jobscripts/ci/slurm_cluster.py down /tmp/slurm

    python jobscripts/ci/slurm_cluster.py up /tmp/slurm2 --nodes 2    # nodes node1, node2
    SLURM_CONF=/tmp/slurm2/slurm.conf sbatch --wait --nodes=2 jobscripts/multi_node.sbatch

Needs root and Debian's ``slurm-wlm`` (22.05) and ``munge``.  Settings that work here
(docs/facts.md): proctrack/linuxproc, task/none, select/cons_tres with CR_Core, PMI-2 for srun
(the MPICH wheel speaks it), no accounting, and each node declared with more CPUs than the
machine has (``config_overrides``) so that a 4-task job fits on 2 cores.

Several nodes on one machine use SLURM's "multiple slurmd" mode, which Debian's build has
(``scontrol show config`` says ``MULTIPLE_SLURMD = Yes``): every node has its own
``NodeName`` and ``Port`` (all at 127.0.0.1), and its own ``slurmd -N <name>`` with its own
spool directory, log and pid file (``%n`` in slurm.conf).  No network namespaces needed.

Everything lives in one directory; ``down`` stops the daemons it started, by the PIDs in
their pid files (SIGTERM, then SIGKILL), checks they are gone and removes the files.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import time

CPUS = 8  # per node, whatever the machine has (config_overrides)
MUNGE_PID = "/run/munge/munged.pid"
DAEMONS = ("munged", "slurmctld", "slurmd")

CONF = """\
ClusterName=mpray-ci
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
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
MinJobAge=5
{node_lines}
PartitionName=debug Nodes={names} Default=YES MaxTime=60 State=UP OverSubscribe=YES
"""
# MinJobAge=5: ``sbatch --wait`` polls every 2 s while 2 < MinJobAge / 2, else 4x as
# long each time (2, 8, 32 s: a 12 s job returned after 42 s); a finished job stays
# listed for 5 s, long enough for a 2 s poll to see it end.

# what up() writes into the directory (down() removes these, and the directory if empty)
MADE = ("slurm.conf", "state", "spool", "slurmctld.pid", "slurmd-*.pid", "slurmctld.log",
        "slurmd-*.log", "munge.started")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_names(nodes: int = 1) -> list[str]:
    """The SLURM node names ``up(d, nodes)`` declares: the host's name for one node (as a
    real single-node install), ``node1``, ``node2``, ... for several."""
    return [socket.gethostname()] if nodes == 1 else [f"node{i}" for i in range(1, nodes + 1)]


def _node_lines(names: list[str], host: str) -> str:
    if len(names) == 1:
        return f"NodeName={host} CPUs={CPUS} State=UNKNOWN"
    # "multiple slurmd": one host, so each node needs a port of its own to be told apart
    return "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 "
                     f"Port={_free_port()} CPUs={CPUS} State=UNKNOWN" for n in names)


def _write_conf(d: str, names: list[str]) -> str:
    host = socket.gethostname()
    os.makedirs(os.path.join(d, "state"), exist_ok=True)
    for n in names:
        os.makedirs(os.path.join(d, "spool", n), exist_ok=True)
    conf = os.path.join(d, "slurm.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(host=host, d=d, ctld_port=_free_port(), d_port=_free_port(),
                            node_lines=_node_lines(names, host), names=",".join(names)))
    return conf


def up(d: str, timeout: float = 30.0, nodes: int = 1) -> dict:
    """Start a cluster of ``nodes`` nodes (``node_names(nodes)``) in directory ``d``, all
    within ``timeout`` seconds; returns the environment to use it.  On failure everything
    started is stopped again and the error says what the daemons logged."""
    for tool in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: apt-get install slurm-wlm munge")
    if nodes < 1:
        raise ValueError(f"nodes must be at least 1, not {nodes}")
    d = os.path.abspath(d)
    if any(_is_daemon(p) for p in _pids(d)):
        raise RuntimeError(f"a cluster is already running in {d}: run down first")
    names = node_names(nodes)
    conf = _write_conf(d, names)
    env = dict(os.environ, SLURM_CONF=conf)
    deadline = time.monotonic() + timeout
    try:
        _start_daemons(d, conf, names, env, deadline)
        _wait_idle(names, env, deadline)
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        msg = f"the SLURM cluster in {d} did not come up: {e}\n{_log_tails(d)}"
        down(d)
        raise RuntimeError(msg) from e
    return {"SLURM_CONF": conf}


def _start_daemons(d: str, conf: str, names: list[str], env: dict, deadline: float) -> None:
    """munged (unless one runs), slurmctld, then one ``slurmd -N name`` per node.  Each
    daemonizes and writes its pid file a moment later: we wait for the file, so that
    down() always knows every PID we started."""
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True,
                      timeout=10).returncode != 0:
        os.makedirs("/run/munge", exist_ok=True)
        if os.path.exists(MUNGE_PID):
            os.unlink(MUNGE_PID)  # a dead munged's: we wait for the new one's below
        _run(["munged", "--force"], env, deadline)
        open(os.path.join(d, "munge.started"), "w").close()  # ours: down() stops it
        _wait_pidfile(MUNGE_PID, deadline)
    _run(["slurmctld", "-f", conf], env, deadline)
    _wait_pidfile(os.path.join(d, "slurmctld.pid"), deadline)
    for n in names:
        _run(["slurmd", "-f", conf, "-N", n], env, deadline)
        _wait_pidfile(os.path.join(d, f"slurmd-{n}.pid"), deadline)


def _run(cmd: list[str], env: dict, deadline: float) -> None:
    left = max(1.0, deadline - time.monotonic())
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {r.returncode}: "
                           f"{(r.stdout + r.stderr).strip()[-2000:]}")


def _wait_pidfile(path: str, deadline: float) -> None:
    # a daemon that started late still gets a few seconds to write its pid file, so that
    # down() finds it after a timeout too
    deadline = max(deadline, time.monotonic() + 5)
    while time.monotonic() < deadline:
        if _read_pid(path) is not None:
            return
        time.sleep(0.05)
    raise RuntimeError(f"no pid file {path}: the daemon did not start")


def _wait_idle(names: list[str], env: dict, deadline: float) -> None:
    """Every node registered with slurmctld and ready for jobs."""
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True,
                           text=True, env=env, timeout=10)
        if r.returncode == 0:
            states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
            if all(states.get(n) in ("idle", "mixed") for n in names):
                return
        time.sleep(0.3)
    raise RuntimeError(f"nodes not ready in time: {states or 'sinfo gave nothing'}")


def _log_tails(d: str, lines: int = 6) -> str:
    out = []
    for path in sorted(glob.glob(os.path.join(d, "*.log"))):
        with open(path, errors="replace") as f:  # (Debian has no libpmix: noise)
            tail = [x for x in f.read().splitlines() if "pmix" not in x][-lines:]
        out.append(f"--- {os.path.basename(path)}:\n" + "\n".join(tail))
    return "\n".join(out)


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _pids(d: str) -> list[int]:
    """The daemons up(d) started, from their pid files (munged only if it started it)."""
    files = [os.path.join(d, "slurmctld.pid"), *glob.glob(os.path.join(d, "slurmd-*.pid"))]
    if os.path.exists(os.path.join(d, "munge.started")):
        files.append(MUNGE_PID)
    return [p for p in map(_read_pid, files) if p is not None]


def down(d: str, keep_files: bool = False) -> None:
    """Stop the daemons started by ``up(d)`` (escalating to SIGKILL: after a failed step
    slurmd may ignore SIGTERM), wait for them, then remove the files up() made."""
    d = os.path.abspath(d)
    pids = [p for p in _pids(d) if _is_daemon(p)]  # not a PID reused since
    _cancel_jobs(d)
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
            break
    left = [p for p in pids if _alive(p)]
    if left:
        raise RuntimeError(f"SLURM daemons {left} would not stop")
    if not keep_files:
        _remove_files(d)


def _cancel_jobs(d: str, timeout: float = 15.0) -> None:
    """Cancel the jobs still in the cluster (a test that gave up on ``sbatch --wait``):
    their slurmstepd and tasks would outlive slurmd.  Every job in it is ours."""
    ctld = _read_pid(os.path.join(d, "slurmctld.pid"))
    if ctld is None or not _is_daemon(ctld):
        return
    env = dict(os.environ, SLURM_CONF=os.path.join(d, "slurm.conf"))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                               env=env, timeout=10)
            jobs = r.stdout.split()
            if r.returncode != 0 or not jobs:
                return
            subprocess.run(["scancel", *jobs], capture_output=True, env=env, timeout=10)
            time.sleep(0.5)
    except subprocess.TimeoutExpired:
        pass  # slurmctld hangs: stopping the daemons is all that is left


def _remove_files(d: str) -> None:
    for pattern in MADE:
        for path in glob.glob(os.path.join(d, pattern)):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
    try:
        os.rmdir(d)  # only if nothing else is there (job outputs stay)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _is_daemon(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() in DAEMONS and _alive(pid)
    except OSError:
        return False


def main() -> None:
    p = argparse.ArgumentParser(description="a throwaway SLURM cluster on this machine")
    p.add_argument("action", choices=("up", "down"))
    p.add_argument("dir")
    p.add_argument("--nodes", type=int, default=1, help="slurmd daemons (up; default 1)")
    p.add_argument("--keep-files", action="store_true",
                   help="down: keep the config and daemons' logs")
    a = p.parse_args()
    if a.action == "up":
        print(f"export SLURM_CONF={up(a.dir, nodes=a.nodes)['SLURM_CONF']}")
    else:
        down(a.dir, keep_files=a.keep_files)


if __name__ == "__main__":
    main()
