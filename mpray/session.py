"""The session: ``init()``, ``shutdown()`` and auto-init (the driver's side of a run).

Data flow of ``init()``::

    driver: resolve Config ─▶ memfd arena (mapped, fd closed) ─▶ shared control block
            (doorbells + driver⇄node rings), mailbox and lease channels ─▶ fork node
            ─▶ DriverClient(proc=0)
    node:   forks num_cpus workers at once, more when tasks block or queue
    MPI:    mpray_mpi.connect (before the fork: the arena is a window) and start (after:
            rank 0 returns, other ranks serve until rank 0's shutdown, then exit)

What submits (``remote_function``, ``actor``) imports ``auto_init`` from here; nothing
here imports them, so the session sits below the public API.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import mmap
import os
import sys
import threading
import time
import warnings
from typing import Any

from . import _global
from . import config as C
from . import protocol as P
from .placement import SPILL_MIN_TASK_S
from .runtime_env import check as check_runtime_env
from .procs import end_when_idle, remove_tree
from .control import sessions
from .control.recorder import REC
from .owner.driver_client import DriverClient
from .transport import atomics as ring_atomics
from .transport.mailbox import channel_bytes, slot_bytes
from .node.loop import NodeSetup, node_main
from .transport.rings import Doorbell, Ring, anonymous_shared, ring_bytes

_init_lock = threading.RLock()


class _Session:
    def __init__(self, cfg: C.Config, node_pid: int, node_pidfd: int, setup: NodeSetup,
                 session_dir: str) -> None:
        self.cfg = cfg
        self.node_pid = node_pid
        self.node_pidfd = node_pidfd
        self.setup = setup
        self.session_dir = session_dir
        self.node_id = setup.node_id
        self.started = time.time()


class RayContext(dict):
    """What init() returns: a dict of address info, usable as a context manager."""

    def __enter__(self) -> "RayContext":
        return self

    def __exit__(self, *a) -> None:
        shutdown()

    @property
    def address_info(self) -> dict:
        return dict(self)


def init(address: str | None = None, *, num_cpus: int | None = None,
         num_gpus: int | None = None, resources: dict | None = None,
         object_store_memory: int | None = None, ignore_reinit_error: bool = False,
         namespace: str | None = None, include_dashboard: bool | None = None,
         log_to_driver: bool | None = None, logging_level: Any = None,
         configure_logging: bool = True, runtime_env: dict | None = None,
         local_mode: bool = False, **settings: Any) -> RayContext:
    """Start mpray: a node on this host, or, launched by ``mpiexec``/``srun`` (or with
    ``backend="mpi"``), one node per MPI rank, rank 0 running the program.

    ``address`` may be ``None``, ``"local"`` or ``"auto"`` (there is no running cluster
    to connect to: each program starts its own).  Every setting of the README's table
    (``num_cpus``, ``object_store_memory="2GiB"``, ``spin_us``, ``backend``, ...) is a
    keyword argument here and an ``MPRAY_*`` environment variable.
    """
    _ray_only_arguments(include_dashboard, logging_level, configure_logging, local_mode)
    with _init_lock:
        if _global.session is None and _global.client is not None:
            # inside a task: the engine is running already (Ray raises here too)
            if ignore_reinit_error:
                return RayContext(node_id=_global.node_id, address="local")
            raise RuntimeError("mpray is already initialized in this worker process; "
                               "init() inside a task is not needed")
        if _global.session is not None:
            if ignore_reinit_error:
                return _context()
            raise RuntimeError(
                "Maybe you called mpray.init twice by accident? This error can be suppressed "
                "by passing in 'ignore_reinit_error=True' or by calling 'mpray.shutdown()' "
                "prior to 'mpray.init()'."
            )
        _check_address(address)
        unknown = set(settings) - {name for name, _e, _h in C.SETTINGS} - {"tmpdir"}
        if unknown:
            raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        args = dict(settings, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                    object_store_memory=object_store_memory, log_to_driver=log_to_driver)
        from mpray_mpi.launch import detect  # environment variables only: no MPI import

        env = dict(os.environ)
        if settings.get("backend"):  # the init() argument wins over MPRAY_BACKEND
            env["MPRAY_BACKEND"] = str(settings["backend"])
        launch = detect(env)
        if launch is not None:
            args = _rank_share(args, launch.local_size)
        cfg = C.resolve(args)
        # (first: the rings' ordering for this CPU; forked processes inherit it)
        ring_atomics.configure(cfg.ring_atomics)
        job_env = check_runtime_env(runtime_env)
        conn = None
        if launch is not None:  # MPI starts before the node is forked (see mpray_mpi)
            import mpray_mpi

            conn = mpray_mpi.connect(launch, cfg)
        _start(cfg, namespace, launch, conn.arena if conn is not None else None, job_env,
               conn.session_name if conn is not None else None)
        if conn is not None:
            mpray_mpi.start(launch, _global.session, _global.session.setup, conn,
                            shutdown=shutdown)
        return _context()


def _check_address(address) -> None:
    if address not in (None, "local", "auto"):
        raise ValueError(f"address={address!r}: mpray starts its own node; use None or 'local'")
    if address == "auto":
        warnings.warn("init(address='auto'): mpray has no running cluster to connect "
                      "to; it starts its own node (under mpiexec/srun: one per rank)",
                      stacklevel=3)


def _ray_only_arguments(include_dashboard, logging_level, configure_logging,
                        local_mode) -> None:
    """Ray's init() arguments for what mpray does not have: said, not ignored."""
    if local_mode:  # (Ray 2.x refuses it the same way; False is accepted, as in Ray)
        raise RuntimeError("`local_mode` is no longer supported (as in Ray 2.x): run the "
                           "program normally; tasks run in worker processes")
    if include_dashboard:
        warnings.warn("init(include_dashboard=True): mpray has no dashboard (see the "
                      "README's tools instead)", stacklevel=3)
    if logging_level is not None and configure_logging:
        logging.getLogger("mpray").setLevel(logging_level)  # (mpray's own logger)


def _rank_share(args: dict, local_ranks: int) -> dict:
    """Under MPI, ranks on one host share what detection finds (unless told otherwise)."""
    env = os.environ
    args = dict(args, host_ranks=local_ranks)  # (its memory too: config._resolve_memory)
    # (inside a SLURM step, detection already gives each task its share of the node)
    if args.get("num_cpus") is None and not env.get("MPRAY_NUM_CPUS") \
            and not env.get("SLURM_CPUS_ON_NODE") and not env.get("SLURM_CPUS_PER_TASK"):
        from . import resources as R

        args["num_cpus"] = max(1, R.detect_num_cpus() // local_ranks)
    if args.get("object_store_memory") is None and not env.get("MPRAY_OBJECT_STORE_MEMORY"):
        from . import resources as R

        args["object_store_memory"] = max(64 << 20, R.default_object_store_bytes() // local_ranks)
    return args


def _start(cfg: C.Config, namespace: str | None, launch=None, arena=None,
           job_env: dict | None = None, name: str | None = None) -> None:
    rank = launch.rank if launch is not None else 0
    root = sessions.base(cfg.log_dir, cfg.tmpdir)
    session_dir, node_dir = sessions.create(root, name or sessions.new_name(), rank)
    setup = _node_setup(cfg, namespace, launch, arena, session_dir)
    setup.node_dir, setup.store = node_dir, cfg.control_store
    setup.store_max_tasks, setup.keep_sessions = cfg.store_max_tasks, cfg.keep_sessions
    setup.prune_root = root if rank == 0 else None
    setup.spill_dir = _spill_dir(cfg, session_dir, node_dir, rank)
    setup.max_lineage_bytes = cfg.max_lineage_bytes
    setup.node_info["runtime_env"] = job_env  # (every worker applies it at its start)
    # the node forks every worker from itself: with the worker's modules imported here,
    # before the node is forked, its first worker starts without importing them (ms)
    importlib.import_module(".worker.loop", __package__)
    # the driver's client is made before the fork: pages written after it are copied
    # on write (both processes map them), and this is the driver's most written state
    client = DriverClient(
        proc=0, rank=setup.rank, up=setup.driver_up, down=setup.driver_down,
        my_bell=setup.driver_bell, node_bell=setup.node_bell, arena=setup.arena,
        inline_max=cfg.inline_max, node_pid=0, node_pidfd=None, id_start=_next_driver_id(),
        spin_us=cfg.spin_us, mailbox=setup.mailbox if setup.mailbox_slots else None,
        mailbox_cap=cfg.direct_ring_bytes, slot_efds=setup.slot_efds,
        max_leases=cfg.num_cpus, lease_depth=cfg.lease_depth, spill_long=setup.spill_long,
        first_spread=setup.first_spread, max_lineage_bytes=cfg.max_lineage_bytes,
    )
    pid = _fork_node(setup, launch)
    node_pidfd = os.pidfd_open(pid)
    client.node_pid, client._node_pidfd = pid, node_pidfd
    _global.session = _Session(cfg, pid, node_pidfd, setup, session_dir)
    _global.session.agent_mem = setup.agent_mem
    _global.session.agent_rings = setup.agent_rings
    _global.session.mpi = None
    _global.node_id = setup.node_id
    _global.node_info = setup.node_info
    _global.session.namespace = namespace
    _global.client = client
    _global.session.logs = None
    if cfg.log_to_driver and rank == 0:  # (rank 0 prints every rank's workers' lines)
        from .control.logs import LogMonitor

        _global.session.logs = LogMonitor(session_dir, cfg.dedup_logs,
                                          launch is not None and launch.size > 1,
                                          _tqdm_line).start()
    if cfg.control_store:  # (the driver's submissions, cancels, functions)
        REC.start(os.path.join(node_dir, "spool"),
                  {"rank": setup.rank, "node_id": setup.node_id, "role": "driver"})
    atexit.register(shutdown)


def _spill_dir(cfg: C.Config, session_dir: str, node_dir: str, rank: int) -> str | None:
    """This node's spill directory (made at its first spill, removed at shutdown): the
    session's own place in the directory asked for, else in the session directory
    when that is under tmpdir (node-local on a cluster), else under tmpdir."""
    where = cfg.object_spilling_directory
    if where == "off":
        return None
    name = os.path.basename(session_dir)
    if where:
        return os.path.join(where, f"mpray-spill-{os.getuid()}-{name}-r{rank}")
    if not cfg.log_dir:
        return os.path.join(node_dir, "spill")
    return os.path.join(sessions.base("", cfg.tmpdir), f"spill-{name}-r{rank}")


def _node_setup(cfg: C.Config, namespace: str | None, launch, arena,
                session_dir: str) -> NodeSetup:
    """The shared memory the driver makes before forking the node (the node and its
    workers inherit it): the arena, the control block with the driver's rings and both
    doorbells, the mailbox slots and lease channels, and (MPI) the agent's rings."""
    if arena is None:
        fd = os.memfd_create("mpray-arena", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, cfg.object_store_memory)
            arena = mmap.mmap(fd, cfg.object_store_memory, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)  # the mapping keeps the memory; it dies with the last process
    # (else: under MPI, the store is an MPI window's shared memory, see mpray_mpi)
    cap = cfg.driver_ring_bytes
    ctrl = anonymous_shared(128 + 2 * ring_bytes(cap))
    node_id = os.urandom(8).hex()
    slots = cfg.direct_slots
    # lease channels: as many as slots (a worker leasing a worker: nested tasks)
    nchannels = slots if cfg.lease_depth else 0
    agent_mem = agent_rings = None
    if launch is not None:  # the rank's MPI agent <-> its node (see mpray_mpi.agent)
        agent_mem = anonymous_shared(2 * ring_bytes(cap))
        agent_rings = (Ring(agent_mem, 0, cap), Ring(agent_mem, ring_bytes(cap), cap))
    rank = launch.rank if launch is not None else 0
    return NodeSetup(
        arena=arena, ctrl=ctrl, node_bell=Doorbell.create(ctrl, 0),
        driver_bell=Doorbell.create(ctrl, 64), driver_up=Ring(ctrl, 128, cap),
        driver_down=Ring(ctrl, 128 + ring_bytes(cap), cap), resources=cfg.node_resources(),
        gpu_ids=cfg.gpu_ids, arena_size=cfg.object_store_memory, inline_max=cfg.inline_max,
        worker_ring_bytes=cfg.worker_ring_bytes, max_workers=cfg.max_workers,
        idle_timeout=cfg.idle_worker_timeout, session_dir=session_dir,
        pipeline_depth=cfg.pipeline_depth, node_id=node_id,
        node_info={"node_id": node_id, "resources": cfg.node_resources(),
                   "job_id": format(os.getpid(), "08x"), "session_dir": session_dir,
                   "namespace": namespace or "", "rank": rank},
        mailbox=anonymous_shared(max(1, slots) * slot_bytes(cfg.direct_ring_bytes)),
        mailbox_slots=slots, mailbox_ring_bytes=cfg.direct_ring_bytes,
        slot_efds=[os.eventfd(0, os.EFD_NONBLOCK) for _ in range(slots)],
        spin_us=cfg.spin_us, agent_rings=agent_rings, agent_mem=agent_mem, rank=rank,
        channels=anonymous_shared(max(1, nchannels) * channel_bytes(cfg.direct_ring_bytes)),
        channel_count=nchannels, lease_depth=cfg.lease_depth, max_leases=cfg.num_cpus,
        # (with other ranks, tasks long enough to be worth moving go by the node)
        spill_long=SPILL_MIN_TASK_S if launch is not None and launch.size > 1 else 0.0,
        # (and the first tasks of a function not timed yet, past this rank's CPUs, go by
        # the node too, which gives them to idle ranks: up to the CPUs of the others)
        first_spread=(launch.size - 1) * cfg.num_cpus
        if launch is not None and launch.size > 1 else 0,
    )


def _fork_node(setup: NodeSetup, launch) -> int:
    """Fork the node process; returns its pid (the child never returns)."""
    driver_pid = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # ---- the node process
        code = 0
        try:
            if launch is not None:
                # MPI launchers end a rank by SIGKILLing its process group; out of it,
                # the node outlives its rank long enough to see it gone (pidfd), end
                # its workers and remove the session directory
                os.setpgid(0, 0)
            node_main(setup, driver_pid)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


_last_driver_id = 0


def _next_driver_id() -> int:
    # ids keep growing across init/shutdown cycles so a stale ObjectRef from an earlier
    # session can never alias an object of this one
    return _last_driver_id + 1


def _context() -> RayContext:
    s = _global.session
    return RayContext(node_ip_address="127.0.0.1", session_dir=s.session_dir,
                      node_id=s.node_id, address="local")


def auto_init() -> DriverClient:
    with _init_lock:
        if _global.client is None:
            init()
        return _global.client


def is_initialized() -> bool:
    """Is mpray running in this process (a driver after ``init``, or any worker)?"""
    return _global.session is not None or _global.client is not None  # driver or worker


def _tqdm_line(line: str) -> None:
    """A worker's tqdm_ray bar state (the log reader's thread): to the bar manager,
    imported at the first bar, not at every init."""
    from .experimental.tqdm_ray import on_magic

    on_magic(line)


def shutdown(_exiting_interpreter: bool = False) -> None:
    """Stop the node and every worker; leaves no process, memory or file behind."""
    global _last_driver_id
    with _init_lock:
        s = _global.session
        client = _global.client
        if s is None:
            return
        if s.mpi is not None:  # rank 0 under MPI: stop every other rank first
            s.mpi.stop()
        _last_driver_id = client._next_id
        REC.stop()  # (its last events reach the spool before the node's writer ends)
        try:
            client.send([P.Shutdown()])
        except Exception:  # noqa: BLE001 - the node may already be gone
            pass
        client.close()
        t = client._future_thread
        if t is not None and t is not threading.current_thread():
            t.join(0.5)  # it leaves its loop at once; then nothing uses the rings below
        _global.client = None
        _global.session = None
        _reap_node(s.node_pid)
        os.close(s.node_pidfd)
        if s.setup.spill_dir:  # (the node removes it; one that was killed could not)
            remove_tree(s.setup.spill_dir)
        if s.logs is not None:  # (the workers are gone: their last lines are in the files)
            s.logs.stop()
            bars = sys.modules.get("mpray.experimental.tqdm_ray")
            if bars is not None:  # (bars of tasks that ended without closing them)
                bars.close_remote_bars()
        _release_memory(s, client)
        # (the session directory stays: its store and logs, for post-mortem use)
        try:
            atexit.unregister(shutdown)
        except Exception:  # noqa: BLE001
            pass


REAP_IDLE_S = 5.0  # a node ending that uses no CPU for this long is killed...
REAP_MAX_S = 60.0  # ...and one still there after this long (its writer may take 30 s)


def _reap_node(pid: int) -> None:
    """Wait for the node to exit (it ends its workers and its writer first): SIGKILL it
    once it has used no CPU for REAP_IDLE_S, or after REAP_MAX_S.  (A node is not killed
    just for being slow: 64 ranks sharing 2 busy cores took up to 10 s to end their
    nodes, and one killed while finishing its writer's work left its session unended.)"""
    end_when_idle(pid, REAP_IDLE_S, REAP_MAX_S)


def _release_memory(s, client) -> None:
    """Close the session's doorbells, rings and shared memory (views still alive keep
    theirs mapped until they go)."""
    st = s.setup
    st.node_bell.close()
    st.driver_bell.close()
    for r in (st.driver_up, st.driver_down):
        r.release()
    client._arena_mv = None
    client.close_rings()
    for fd in st.slot_efds or ():
        os.close(fd)
    for r in s.agent_rings or ():
        r.release()
    _global.cluster = None
    for m in (st.ctrl, st.mailbox, st.channels, s.agent_mem):
        if m is None:
            continue
        try:
            m.close()
        except BufferError:
            pass
    try:
        if isinstance(st.arena, mmap.mmap):  # (an MPI window stays until MPI_Finalize)
            st.arena.close()
    except BufferError:
        pass  # live zero-copy views still use it; it is unmapped when they go
