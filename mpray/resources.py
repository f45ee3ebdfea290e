"""Allocation-aware detection of CPUs, memory and GPUs.

On HPC nodes and in containers the machine's size (``os.cpu_count()``, MemTotal) is not
what this job may use: the CPU affinity mask, cgroup quotas and the SLURM allocation all
shrink it. Oversubscribing a SLURM allocation slows every task down, so we take the
minimum of all the limits we can see.

Every function takes its inputs (environment, file paths) as optional parameters so that
tests can feed fake cgroup trees instead of the real ``/sys/fs/cgroup``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation, localcontext

__all__ = ["detect_num_cpus", "detect_memory_bytes", "default_object_store_bytes",
           "detect_gpus", "parse_size"]

MIB = 1024 * 1024
MIN_OBJECT_STORE_BYTES = 64 * MIB
OBJECT_STORE_FRACTION = 0.30
# cgroup v1 spells "no limit" as a huge page-aligned number (about 2**63); anything this
# large is no real limit.
_UNLIMITED = 2**60


# ----------------------------------------------------------------------------- cgroup helpers

def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _cgroup_dirs(root: str, proc_cgroup: str, controller: str | None) -> list[str]:
    """Directories of our cgroup and all its ancestors up to ``root`` (limits nest).

    ``controller`` None selects the cgroup v2 line ``0::/path``; otherwise the v1 line that
    lists ``controller``. In a container the path printed in /proc/self/cgroup may not
    exist under the (namespaced) mount, so missing directories are simply skipped and the
    walk always ends at ``root`` itself.
    """
    rel = "/"
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if controller is None and parts[0] == "0" and parts[1] == "":
            rel = parts[2]
        elif controller is not None and controller in parts[1].split(","):
            rel = parts[2]
    pieces = [p for p in rel.split("/") if p and p not in (".", "..")]
    dirs = [os.path.join(root, *pieces[:n]) for n in range(len(pieces), -1, -1)]
    return [d for d in dirs if os.path.isdir(d)]


def _cgroup_cpu_limit(cgroup_root: str, proc_cgroup: str) -> float | None:
    """Smallest CPU quota (in CPUs) over cgroup v2 ``cpu.max`` and v1 CFS files, or None."""
    limits: list[float] = []
    for d in _cgroup_dirs(cgroup_root, proc_cgroup, None):
        fields = (_read(os.path.join(d, "cpu.max")) or "").split()
        if len(fields) == 2 and fields[0] != "max":  # "max 100000" means unlimited
            try:
                quota, period = int(fields[0]), int(fields[1])
            except ValueError:
                continue
            if quota > 0 and period > 0:
                limits.append(quota / period)
    for d in _cgroup_dirs(os.path.join(cgroup_root, "cpu"), proc_cgroup, "cpu"):
        quota = _read_int(os.path.join(d, "cpu.cfs_quota_us"))  # -1 means unlimited
        period = _read_int(os.path.join(d, "cpu.cfs_period_us"))
        if quota is not None and period is not None and quota > 0 and period > 0:
            limits.append(quota / period)
    return min(limits) if limits else None


def _slurm_cpus(env: Mapping[str, str]) -> int | None:
    """CPUs SLURM gave this task, or None outside SLURM / on unparsable values.

    ``SLURM_CPUS_PER_TASK`` (set by ``--cpus-per-task``) wins. Otherwise the node's CPUs
    (``SLURM_CPUS_ON_NODE``) are shared evenly between the tasks on the node, taken from
    ``SLURM_NTASKS_PER_NODE`` or the first field of ``SLURM_TASKS_PER_NODE`` ("2(x3),1"
    -> 2). Values SLURM wrote are not the user's choice, so bad ones are ignored.
    """
    def num(name: str) -> int | None:
        match = re.match(r"\s*([0-9]+)", env.get(name, ""))
        return int(match.group(1)) if match and int(match.group(1)) > 0 else None

    per_task = num("SLURM_CPUS_PER_TASK")
    if per_task is not None:
        return per_task
    on_node = num("SLURM_CPUS_ON_NODE")
    if on_node is None:
        return None
    tasks = num("SLURM_NTASKS_PER_NODE") or num("SLURM_TASKS_PER_NODE") or 1
    return max(1, on_node // tasks)


# ----------------------------------------------------------------------------- public API

def detect_num_cpus(env: Mapping[str, str] | None = None, affinity: int | None = None,
                    cgroup_root: str = "/sys/fs/cgroup",
                    proc_cgroup: str = "/proc/self/cgroup") -> int:
    """Number of CPUs this process may use (always >= 1).

    The minimum of the affinity mask size (default ``len(os.sched_getaffinity(0))``), the
    cgroup CPU quota rounded up (1.5 CPUs -> 2: a fractional CPU still runs a worker), and
    the SLURM allocation. ``MPRAY_NUM_CPUS`` overrides all of them, also upwards, because it
    is an explicit user choice; it must be a positive integer (ValueError otherwise).
    """
    env = os.environ if env is None else env
    override = env.get("MPRAY_NUM_CPUS", "").strip()
    if override:  # an empty value (``export MPRAY_NUM_CPUS=``) counts as unset
        if not re.fullmatch(r"[0-9]+", override) or int(override) < 1:
            raise ValueError(f"MPRAY_NUM_CPUS must be a positive integer, got {override!r}")
        return int(override)
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            affinity = os.cpu_count() or 1
    candidates = [affinity]
    quota = _cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if quota is not None:
        candidates.append(math.ceil(quota))
    slurm = _slurm_cpus(env)
    if slurm is not None:
        candidates.append(slurm)
    return max(1, min(candidates))


def _mem_available(meminfo: str) -> int | None:
    text = _read(meminfo)
    if text is None:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    for key in ("MemAvailable", "MemFree"):  # MemAvailable is missing on very old kernels
        if key in fields:
            value = fields[key].split()
            try:
                return int(value[0]) * 1024 if value else None  # reported in kB
            except ValueError:
                return None
    return None


def _inactive_file(stat_path: str, key: str) -> int:
    # Page cache the kernel can drop at will is counted in usage but is not really in use.
    for line in (_read(stat_path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def detect_memory_bytes(cgroup_root: str = "/sys/fs/cgroup", meminfo: str = "/proc/meminfo",
                        proc_cgroup: str = "/proc/self/cgroup") -> int:
    """Bytes of memory this process can still use (never negative).

    The minimum of ``MemAvailable`` and, for each cgroup level, its limit minus its usage
    (v2 ``memory.max``/``memory.current``, v1 ``memory.limit_in_bytes``/
    ``memory.usage_in_bytes``), not counting reclaimable inactive page cache as usage.
    "max" and huge values mean no limit. Falls back to psutil when meminfo is unreadable.
    """
    available = _mem_available(meminfo)
    if available is None:
        import psutil  # lazy: only needed off Linux

        available = int(psutil.virtual_memory().available)
    candidates = [available]
    layouts = [(cgroup_root, None, "memory.max", "memory.current", "inactive_file"),
               (os.path.join(cgroup_root, "memory"), "memory", "memory.limit_in_bytes",
                "memory.usage_in_bytes", "total_inactive_file")]
    for base, controller, limit_file, usage_file, inactive_key in layouts:
        for d in _cgroup_dirs(base, proc_cgroup, controller):
            limit = _read_int(os.path.join(d, limit_file))  # None for "max"
            if limit is None or limit >= _UNLIMITED:
                continue
            usage = _read_int(os.path.join(d, usage_file)) or 0
            usage -= _inactive_file(os.path.join(d, "memory.stat"), inactive_key)
            candidates.append(limit - max(0, usage))
    return max(0, min(candidates))


def default_object_store_bytes(available: int | None = None) -> int:
    """Default object store capacity: 30 % of available memory, at least 64 MiB.

    The store lives in memfd segments, so /dev/shm's size does not limit it.
    """
    if available is None:
        available = detect_memory_bytes()
    return max(MIN_OBJECT_STORE_BYTES, int(available * OBJECT_STORE_FRACTION))


def _parse_nvidia_smi(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().isdigit()]


def detect_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """GPU ids this process may use, as strings (indices or ``GPU-<uuid>``).

    ``CUDA_VISIBLE_DEVICES`` wins when set: "" or "NoDevFiles" mean none, and, as CUDA
    does, a negative id such as "-1" hides itself and every id after it. Otherwise ask
    ``nvidia-smi`` (found on ``env["PATH"]``, 5 s timeout); any failure means no GPUs.
    """
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids: list[str] = []
        for item in (part.strip() for part in visible.split(",")):
            if not item or item == "NoDevFiles" or item.startswith("-"):
                break
            ids.append(item)
        return ids
    exe = shutil.which("nvidia-smi", path=env.get("PATH"))
    if exe is None:
        return []
    try:
        proc = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return _parse_nvidia_smi(proc.stdout) if proc.returncode == 0 else []


# Decimal units are powers of 1000; IEC units and single letters (as in Docker, SLURM's
# --mem and ``free``) are powers of 1024.
_UNITS = {"": 1, "b": 1,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_SIZE_RE = re.compile(r"^\s*([0-9._]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse a byte size such as "512MB", "2GiB", "1.5g", "1e9" or "100000" into bytes.

    Fractions of a byte are truncated. Raises ValueError naming ``text`` when it is not a
    non-negative size. Plain ints are returned unchanged.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"invalid size {text!r}: must not be negative")
        return text
    match = _SIZE_RE.match(text) if isinstance(text, str) else None
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"invalid size {text!r}: expected a number with an optional unit "
                         "such as B, KB, MB, GB, KiB, MiB, GiB or G")
    try:  # Decimal keeps "1.5GiB" and very large integers exact, unlike float
        number = Decimal(match.group(1))
    except InvalidOperation:
        raise ValueError(f"invalid size {text!r}: {match.group(1)!r} is not a number") from None
    # Refuse absurd sizes before multiplying: "1e999999999" would overflow the context.
    if number.adjusted() > 30:
        raise ValueError(f"invalid size {text!r}: too large")
    with localcontext() as ctx:
        ctx.prec = 60  # exact for any integer part below 10**31 times the largest unit
        return int(number * _UNITS[unit])
