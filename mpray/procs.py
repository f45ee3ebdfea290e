"""Process helpers the node and workers share: parent-death signals, killing by PID,
removing a session's files, and keeping MPI away from forked processes.

Data flow::

    node / worker ─ set_parent_death_signal (prctl) ─▶ the kernel kills it with its parent
    node          ─ fork_held() ─▶ a child that gets SIGTERM only once it is set up
    node / agent  ─ how_it_ended(wait status) ─▶ "was killed by SIGKILL (...)" in messages
    node          ─ kill(pid) / remove_tree(dir) / remove_mpi_segments() ─▶ nothing left
    worker        ─ strip_mpi_environment() ─▶ it can never initialise MPI
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

_PR_SET_PDEATHSIG = 1
_MPI_ENV_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPICH_", "I_MPI_", "PRTE_")


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; the getppid() checks remain
        pass


def fork_held() -> int:
    """``os.fork()`` with SIGTERM blocked across it, and still blocked in the child: the
    node's handler (it raises SystemExit) would otherwise fire in a child that is not set
    up yet, even inside the interpreter's at-fork hooks, where it can only print
    "Exception ignored".  The child unblocks it (``release_term``) once it can end
    cleanly, or takes it with ``sigtimedwait``."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    pid = os.fork()
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return pid


def release_term() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def how_it_ended(status: int) -> str:
    """A child's wait status in words (a SIGKILL is what the out-of-memory killer sends)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = " (the out-of-memory killer's signal, among others)" if sig == signal.SIGKILL \
            else ""
        return f"was killed by {name}{hint}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"ended (wait status {status})"


def kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def remove_tree(path: str) -> None:
    import shutil

    if path and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


# shared-memory files of MPI libraries (MPICH; Open MPI's shared-memory transports)
MPI_SEGMENT_PREFIXES = ("/dev/shm/mpich_shm_", "/dev/shm/vader_segment.",
                        "/dev/shm/sm_segment.")


def remove_mpi_segments() -> None:
    """Unlink the MPI library's shared-memory files this rank had mapped.  Its
    MPI_Finalize unlinks them; a rank killed by its launcher never gets there, and the
    files would outlive the job.  The node inherited the rank's mappings at fork, so they
    are this job's; ranks still running keep their mappings (unlink removes the name)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f
                     if line.count(" ") >= 5 and "/dev/shm/" in line}
    except OSError:
        return
    for path in paths:
        if path.startswith(MPI_SEGMENT_PREFIXES):
            try:
                os.unlink(path)
            except OSError:
                pass


def strip_mpi_environment() -> None:
    """Workers must never initialise MPI (docs/facts.md): hide the launcher's variables."""
    for k in [k for k in os.environ if k.startswith(_MPI_ENV_PREFIXES)]:
        del os.environ[k]


def wait_exit(pid: int, timeout: float) -> bool:
    """Reap child ``pid``, waiting up to ``timeout`` seconds; True once it is gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if done:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.0005)


def end_when_idle(pid: int, idle_s: float, max_s: float) -> bool:
    """Wait for child ``pid`` to exit; SIGKILL it once it has used no CPU for ``idle_s``
    (stuck, not slow: a process on a busy machine may take long to end its work) or
    after ``max_s``, then reap it.  True if it had to be killed."""
    deadline = time.monotonic() + max_s
    last, since = cpu_ticks(pid), time.monotonic()
    while not wait_exit(pid, 0.1):
        now, ticks = time.monotonic(), cpu_ticks(pid)
        if ticks != last:
            last, since = ticks, now
        elif now - since > idle_s or now > deadline:
            kill(pid, signal.SIGKILL)
            while not wait_exit(pid, 5.0):
                kill(pid, signal.SIGKILL)
            return True
    return False


def cpu_ticks(pid: int):
    """A process's CPU time so far (clock ticks; None where /proc cannot say)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # (utime, stime)
    except (OSError, ValueError, IndexError):
        return None
