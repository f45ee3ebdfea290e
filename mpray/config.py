"""Settings: every one is an ``init()`` argument and an ``MPRAY_*`` environment variable.

An explicit ``init()`` argument wins over the environment, which wins over detection
(affinity, cgroups and SLURM for CPUs; cgroup-aware available memory for the store).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import resources as R
from .transport.atomics import CHOICES as RING_ATOMICS

KB = 1024
MB = 1024 * KB


def _env_float(env: Mapping[str, str], name: str) -> float | None:
    v = env.get(name)
    if v is None or v == "":
        return None
    try:
        return float(v)
    except ValueError:
        raise ValueError(f"{name}={v!r} is not a number") from None


def _flag(args: Mapping[str, Any], env: Mapping[str, str], name: str, envname: str,
          default: bool) -> bool:
    """A yes/no setting: the argument, else the variable (1/0, true/false, yes/no, on/off)."""
    v = args.get(name)
    if v is not None:
        return bool(v)
    raw = env.get(envname, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{envname}={env[envname]!r}: use 1 or 0")


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    v = _env_float(env, name)
    if v is None:
        return None
    if v != int(v) or v < 0:
        raise ValueError(f"{name}={env[name]!r} must be a non-negative integer")
    return int(v)


# name, type, default, help: the README's configuration table is generated from this list
SETTINGS: list[tuple[str, str, str]] = [
    ("num_cpus", "MPRAY_NUM_CPUS", "CPUs of the allocation: min(affinity, cgroup quota, SLURM)"),
    ("num_gpus", "MPRAY_NUM_GPUS", "GPUs from CUDA_VISIBLE_DEVICES / nvidia-smi"),
    ("resources", "MPRAY_RESOURCES", "custom resources, JSON object, e.g. {\"disk\": 2}"),
    ("object_store_memory", "MPRAY_OBJECT_STORE_MEMORY", "store size, e.g. 2GiB; default 30 % of available memory"),
    ("inline_max", "MPRAY_INLINE_MAX", "values up to this many bytes travel inline (100 KiB)"),
    ("max_workers", "MPRAY_MAX_WORKERS", "cap on non-blocked workers (default 2 × CPUs, at least 4)"),
    ("idle_worker_timeout", "MPRAY_IDLE_WORKER_TIMEOUT", "seconds before an extra idle worker exits (10)"),
    ("pipeline_depth", "MPRAY_PIPELINE_DEPTH", "tasks queued per busy worker, running one included (2)"),
    ("direct_slots", "MPRAY_DIRECT_SLOTS", "workers with a mailbox slot (leasable, and able to lease), and as many lease channels (32; 0: none)"),
    ("lease_depth", "MPRAY_LEASE_DEPTH", "tasks in flight per leased worker, the driver's and workers' (2; 0: no leases)"),
    ("spin_us", "MPRAY_SPIN_US", "µs a waiting process polls (yielding the CPU) before it sleeps (50; 0: never)"),
    ("tmpdir", "MPRAY_TMPDIR", "parent of the session directory (TMPDIR, else /tmp)"),
    ("object_spilling_directory", "MPRAY_SPILL_DIR", "where values go when the store is full, a directory of this session's made in it (default: the session directory, under tmpdir unless log_dir moves it: then tmpdir; off: never spill, a full store raises)"),
    ("max_lineage_bytes", "MPRAY_MAX_LINEAGE_BYTES", "lineage (task specs) a node keeps to remake values whose spill files are lost; the oldest is forgotten beyond it (1GiB)"),
    ("backend", "MPRAY_BACKEND", "auto (MPI when launched by mpiexec/srun), local or mpi"),
    ("export_bytes", "MPRAY_EXPORT_BYTES", "MPI: per-rank window values are copied into when the store is not a window (256 MiB)"),
    ("mpi_arena", "MPRAY_MPI_ARENA", "MPI: window (the store is an MPI window, zero-copy reads) or copy"),
    ("driver_ring_bytes", "MPRAY_DRIVER_RING_BYTES", "ring size driver <-> node (8 MiB)"),
    ("worker_ring_bytes", "MPRAY_WORKER_RING_BYTES", "ring size worker <-> node (1 MiB)"),
    ("direct_ring_bytes", "MPRAY_DIRECT_RING_BYTES", "ring size of each mailbox slot and lease channel: bounds the leased tasks and direct actor calls in flight (256 KiB)"),
    ("ring_atomics", "MPRAY_RING_ATOMICS", "memory ordering of the rings: auto (tso on x86-64, portable elsewhere), tso or portable (acquire/release atomics compiled with numba)"),
    ("control_store", "MPRAY_CONTROL_STORE", "record tasks, actors, objects and workers in the session's SQLite store (1; 0: off)"),
    ("log_dir", "MPRAY_LOG_DIR", "where sessions (store, logs) are kept after shutdown (default: <tmpdir>/mpray-<uid>)"),
    ("keep_sessions", "MPRAY_KEEP_SESSIONS", "finished sessions kept in that directory, the newest (10)"),
    ("store_max_tasks", "MPRAY_STORE_MAX_TASKS", "task rows the store keeps per node, the oldest dropped first (100000)"),
    ("log_to_driver", "MPRAY_LOG_TO_DRIVER", "workers' output printed by the driver, labelled (1; 0: in the session's log files only)"),
    ("dedup_logs", "MPRAY_DEDUP_LOGS", "fold lines repeated across workers, as Ray does (1; 0: off)"),
]


@dataclass
class Config:
    num_cpus: int = 1
    num_gpus: int = 0
    gpu_ids: list[str] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int = 256 * MB
    inline_max: int = 100 * KB
    max_workers: int = 0
    pipeline_depth: int = 2
    direct_slots: int = 32
    lease_depth: int = 2
    spin_us: int = 50
    direct_ring_bytes: int = 256 * KB
    idle_worker_timeout: float = 10.0
    tmpdir: str = "/tmp"
    driver_ring_bytes: int = 8 * MB
    worker_ring_bytes: int = 1 * MB
    ring_atomics: str = "auto"  # (transport/atomics.py turns it into tso or portable)
    task_memory: int = 0
    backend: str = "auto"
    export_bytes: int = 256 * MB
    mpi_arena: str = "window"
    control_store: bool = True
    log_dir: str = ""
    object_spilling_directory: str = ""  # "" the default place; "off" no spilling
    max_lineage_bytes: int = 1 << 30
    keep_sessions: int = 10
    store_max_tasks: int = 100_000
    log_to_driver: bool = True
    dedup_logs: bool = True

    def node_resources(self) -> dict[str, float]:
        res: dict[str, float] = {"CPU": float(self.num_cpus)}
        if self.num_gpus:
            res["GPU"] = float(self.num_gpus)
        res["memory"] = float(self.task_memory)  # Ray reports heap memory for tasks too
        res["object_store_memory"] = float(self.object_store_memory)
        res.update(self.resources)
        return res


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


def resolve(args: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Build the session's Config from init() arguments, the environment and detection."""
    env = os.environ if env is None else env
    c = Config()
    _resolve_processors(c, args, env)
    _resolve_resources(c, args, env)
    _resolve_memory(c, args, env)
    _resolve_tuning(c, args, env)
    return c


def _resolve_processors(c: Config, args: Mapping[str, Any], env: Mapping[str, str]) -> None:
    n = args.get("num_cpus")
    if n is None:
        c.num_cpus = R.detect_num_cpus(env)
    else:
        if not isinstance(n, (int, float)) or isinstance(n, bool) or n < 0 or n != int(n):
            raise ValueError(f"num_cpus must be a non-negative integer, not {n!r}")
        c.num_cpus = int(n)
    gpus = R.detect_gpus(env)
    g = args.get("num_gpus")
    if g is None:
        g = _env_int(env, "MPRAY_NUM_GPUS")
    if g is None:
        c.num_gpus, c.gpu_ids = len(gpus), list(gpus)
    else:
        if not isinstance(g, (int, float)) or isinstance(g, bool) or g < 0 or g != int(g):
            raise ValueError(f"num_gpus must be a non-negative integer, not {g!r}")
        c.num_gpus = int(g)
        c.gpu_ids = (list(gpus) + [str(i) for i in range(len(gpus), c.num_gpus)])[: c.num_gpus]


def _resolve_resources(c: Config, args: Mapping[str, Any], env: Mapping[str, str]) -> None:
    res = args.get("resources")
    if res is None and env.get("MPRAY_RESOURCES"):
        import json

        try:
            res = json.loads(env["MPRAY_RESOURCES"])
        except ValueError as e:
            raise ValueError(f"MPRAY_RESOURCES is not a JSON object: {e}") from None
    if res is not None:
        if not isinstance(res, dict):
            raise TypeError(f"resources must be a dict of name -> amount, not {type(res).__name__}")
        for k, v in res.items():
            if k in ("CPU", "GPU"):
                raise ValueError(f"use num_cpus/num_gpus instead of resources[{k!r}]")
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"resource {k!r} must be a non-negative number, not {v!r}")
        c.resources = {str(k): float(v) for k, v in res.items()}


def _resolve_memory(c: Config, args: Mapping[str, Any], env: Mapping[str, str]) -> None:
    osm = args.get("object_store_memory")
    if osm is None and env.get("MPRAY_OBJECT_STORE_MEMORY"):
        osm = env["MPRAY_OBJECT_STORE_MEMORY"]
    if isinstance(osm, str):  # "1GiB", "512M", "2e9" (as the variable takes them)
        osm = R.parse_size(osm)
    if osm is None:
        osm = R.default_object_store_bytes()
    if not isinstance(osm, int) or isinstance(osm, bool) or osm < MB:
        raise ValueError(f"object_store_memory must be an integer of at least 1 MiB, not {osm!r}")
    c.object_store_memory = osm
    # (ranks on one host share its memory, as they share its CPUs: each reports its part)
    c.task_memory = max(R.detect_memory_bytes() // max(1, args.get("host_ranks") or 1) - osm,
                        0)
    mlb = args.get("max_lineage_bytes")
    if mlb is None and env.get("MPRAY_MAX_LINEAGE_BYTES"):
        mlb = R.parse_size(env["MPRAY_MAX_LINEAGE_BYTES"])
    if mlb is not None:
        if int(mlb) < 0:
            raise ValueError(f"max_lineage_bytes must be at least 0, not {mlb!r}")
        c.max_lineage_bytes = int(mlb)
    eb = args.get("export_bytes")
    if eb is None and env.get("MPRAY_EXPORT_BYTES"):
        eb = R.parse_size(env["MPRAY_EXPORT_BYTES"])
    if eb is not None:
        c.export_bytes = int(eb)
    for name, envname in (("driver_ring_bytes", "MPRAY_DRIVER_RING_BYTES"),
                          ("worker_ring_bytes", "MPRAY_WORKER_RING_BYTES"),
                          ("direct_ring_bytes", "MPRAY_DIRECT_RING_BYTES")):
        v = args.get(name)
        if v is None and env.get(envname):
            v = R.parse_size(env[envname])
        if v is not None:
            setattr(c, name, _pow2_at_least(max(int(v), 4096)))


def _resolve_tuning(c: Config, args: Mapping[str, Any], env: Mapping[str, str]) -> None:
    for name, envname in (("inline_max", "MPRAY_INLINE_MAX"), ("max_workers", "MPRAY_MAX_WORKERS"),
                          ("pipeline_depth", "MPRAY_PIPELINE_DEPTH"),
                          ("direct_slots", "MPRAY_DIRECT_SLOTS"),
                          ("lease_depth", "MPRAY_LEASE_DEPTH"),
                          ("spin_us", "MPRAY_SPIN_US"),
                          ("keep_sessions", "MPRAY_KEEP_SESSIONS"),
                          ("store_max_tasks", "MPRAY_STORE_MAX_TASKS")):
        v = args.get(name)
        if v is None:
            v = _env_int(env, envname)
        if v is not None:
            setattr(c, name, int(v))
    t = args.get("idle_worker_timeout")
    if t is None:
        t = _env_float(env, "MPRAY_IDLE_WORKER_TIMEOUT")
    if t is not None:
        c.idle_worker_timeout = float(t)
    c.tmpdir = args.get("tmpdir") or env.get("MPRAY_TMPDIR") or tempfile.gettempdir()
    c.log_dir = str(args.get("log_dir") or env.get("MPRAY_LOG_DIR") or "")
    spill = args.get("object_spilling_directory")
    spill = str(spill if spill is not None else env.get("MPRAY_SPILL_DIR", "")).strip()
    if spill and spill.lower() != "off" and os.path.exists(spill) and not os.path.isdir(spill):
        raise ValueError(f"object_spilling_directory (MPRAY_SPILL_DIR) {spill!r} is not a "
                         "directory")
    c.object_spilling_directory = "off" if spill.lower() == "off" else spill
    for name, envname in (("control_store", "MPRAY_CONTROL_STORE"),
                          ("log_to_driver", "MPRAY_LOG_TO_DRIVER"),
                          ("dedup_logs", "MPRAY_DEDUP_LOGS")):
        setattr(c, name, _flag(args, env, name, envname, getattr(c, name)))
    for name, envname, allowed in (("backend", "MPRAY_BACKEND", ("auto", "local", "mpi")),
                                   ("mpi_arena", "MPRAY_MPI_ARENA", ("window", "copy")),
                                   ("ring_atomics", "MPRAY_RING_ATOMICS", RING_ATOMICS)):
        v = args.get(name) or env.get(envname) or getattr(c, name)
        v = str(v).strip().lower()
        if v not in allowed:
            raise ValueError(f"{name} ({envname}) must be one of {', '.join(allowed)}, not {v!r}")
        setattr(c, name, v)
