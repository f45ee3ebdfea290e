"""mpray's MPI backend: every MPI rank a node, RMA object transfer, global scheduling.

``mpray.init()`` imports this package only when ``launch.detect()`` says the process is
one rank of an MPI or ``srun`` job (or ``MPRAY_BACKEND=mpi``).  Roles::

    rank 0:  init() starts its node, joins the ranks, starts the agent thread, returns:
             the user's script runs here (the driver); shutdown() stops every rank
    rank k:  init() starts its node, joins the ranks, and serves in the agent loop until
             rank 0 says stop; then the process exits with status 0 (code after init()
             never runs there, so one script works unchanged)

Each rank's node and workers are forked before MPI is initialised and never touch MPI;
the rank's own process (driver or server) runs the ``agent.Agent`` that bridges MPI and
the node.  See docs/architecture.md ("Under MPI").
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback

from mpray.control.sessions import new_name

from .launch import Launch, detect

__all__ = ["Connection", "Launch", "MPISession", "connect", "detect", "start"]


class MPISession:
    """What rank 0's session keeps: the agent, its thread, and how to stop them."""

    def __init__(self, MPI, comm, agent, launch: Launch) -> None:
        self.MPI = MPI
        self.comm = comm
        self.agent = agent
        self.launch = launch
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, name="mpray-mpi-agent", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        agent = self.agent
        try:
            agent.run(lambda: self.stopping)
            if not agent.stop_all():
                from .agent import abort

                missing = sorted(set(range(1, agent.size)) - agent.stopped)
                abort(self.comm, f"ranks {missing} did not stop (no rank answered for "
                                 f"10 s); ending the job")
            agent.close()
        except BaseException:  # noqa: BLE001 - a bug here must end the job, loudly
            from .agent import abort

            abort(self.comm, "the MPI agent thread failed:\n" + traceback.format_exc())

    def stop(self) -> None:
        """Rank 0's shutdown(): stop every other rank, free the windows (collective).
        Waits while ranks keep stopping (``Agent.stop_all``), up to 30 s past the last."""
        self.stopping = True
        seen, until = -1, 0.0
        while self.thread.is_alive():
            if len(self.agent.stopped) != seen:
                seen, until = len(self.agent.stopped), time.monotonic() + 30.0
            if time.monotonic() > until:
                break
            self.thread.join(0.1)


class Connection:
    """MPI initialised, and (when it can be shared with forked processes) the rank's
    object store allocated as an MPI window, so other ranks Get objects straight from it."""

    def __init__(self, MPI, comm, arena_win, arena, export_bytes: int) -> None:
        self.MPI = MPI
        self.comm = comm
        self.arena_win = arena_win
        self.arena = arena  # None: the store is private memfd memory (export windows)
        self.export_bytes = export_bytes
        self.session_name: str | None = None  # rank 0's, for every rank (one session dir)


def connect(launch: Launch, cfg) -> Connection:
    """Initialise MPI (before the node is forked: the node and workers inherit the arena
    window's shared mapping but never call MPI) and allocate the arena window.

    MPICH backs ``Win.Allocate`` on one host with a shared segment, which forked
    processes share; elsewhere the memory may be private.  Every rank checks with a
    forked probe and all agree (``mpi_arena="copy"`` skips it): either every rank's
    store is a window, or every rank copies values into export windows."""
    # The arena window is never freed before MPI_Finalize (the driver's zero-copy arrays
    # may point into it after shutdown()); UCX reports that at exit as a leak warning.
    os.environ.setdefault("UCX_LOG_LEVEL", "error")
    quiet_open_mpi()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD.Dup()
    conn = _connect_arena(MPI, comm, cfg)
    # every rank's files go to one session (rank k: its rank-<k> directory in it)
    conn.session_name = comm.bcast(new_name() if comm.Get_rank() == 0 else None, root=0)
    return conn


def _stream_logs(comm, rank: int, agent, session, setup) -> None:
    """Workers' output reaches rank 0's driver: from the files where it can read them
    (one host, a shared log_dir); a rank whose directory it cannot read (another host's
    disk) sends its lines through its agent."""
    dirs = comm.allgather(setup.node_dir)
    here = session.session_dir  # (what rank 0's reader reads: this session's rank dirs)
    far = comm.bcast([k for k, d in enumerate(dirs) if k and d and not (
        os.path.dirname(d) == here and os.path.isdir(d))] if rank == 0 else None, root=0)
    if not far or not session.cfg.log_to_driver:
        return
    if rank == 0 and session.logs is not None:
        agent.on_logs = session.logs.remote_lines
    elif rank in far:
        from mpray.control.logs import LogMonitor

        # (stopped by this rank's shutdown, after its workers: their last lines too)
        session.logs = LogMonitor(session.session_dir, False, True, sink=agent.log_lines.append,
                                  only=setup.node_dir).start()


def quiet_open_mpi(env=os.environ, rdma_dir: str = "/sys/class/infiniband") -> None:
    """Open MPI 5's UCX one-sided component prints an error line on every rank at
    MPI_Init where there is no RDMA device (it cannot run there, and Open MPI goes on with
    another): leave it out there, unless the user chose the components.  (MPICH ignores
    OMPI_ variables; with an RDMA device UCX is what carries RMA well.)"""
    try:
        rdma = bool(os.listdir(rdma_dir))
    except OSError:
        rdma = False
    if not rdma:
        env.setdefault("OMPI_MCA_osc", "^ucx")


def _connect_arena(MPI, comm, cfg) -> Connection:
    if not comm.allreduce(cfg.mpi_arena == "window", op=MPI.LAND):
        return Connection(MPI, comm, None, None, cfg.export_bytes)
    win = MPI.Win.Allocate(cfg.object_store_memory, 1, comm=comm)
    mem = memoryview(win.tomemory()).cast("B")
    shared = _shared_across_fork(mem)
    if comm.allreduce(shared, op=MPI.LAND):
        return Connection(MPI, comm, win, mem, cfg.export_bytes)
    mem.release()
    win.Free()
    return Connection(MPI, comm, None, None, cfg.export_bytes)


def _shared_across_fork(mem: memoryview) -> bool:
    """Does a forked child's write show here?  (MAP_SHARED memory, or not.)"""
    if len(mem) < 1:
        return False
    mem[0] = 0
    pid = os.fork()
    if pid == 0:
        mem[0] = 0x5A
        os._exit(0)
    os.waitpid(pid, 0)
    shared = mem[0] == 0x5A
    mem[0] = 0
    return shared


def start(launch: Launch, session, setup, conn: Connection, shutdown) -> None:
    """Join the job: rank 0 returns (with ``session.mpi`` set); other ranks serve and exit
    (``shutdown``: the session's, which ends this rank's node and workers)."""
    from mpray import _global

    from .agent import Agent, abort

    MPI, comm = conn.MPI, conn.comm
    rank, size = comm.Get_rank(), comm.Get_size()
    info = comm.allgather((setup.node_id, dict(setup.resources), socket.gethostname()))
    up, down = session.agent_rings
    agent = Agent(MPI, comm, rank, size, info, setup.arena, up, down, setup.node_bell,
                  conn.export_bytes, session.node_pid, arena_win=conn.arena_win)
    agent.hello()
    _global.cluster = info
    _stream_logs(comm, rank, agent, session, setup)
    if rank == 0:
        session.mpi = MPISession(MPI, comm, agent, launch)
        return
    # ---- a serving rank: no user code runs here
    try:
        agent.run(lambda: agent.stop_requested)
        shutdown()  # this rank's node and workers
        agent.report_stopped()  # (RStopped to rank 0, sent by close())
        agent.close()
    except BaseException:  # noqa: BLE001
        abort(comm, "rank failed while serving:\n" + traceback.format_exc())
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(0)
