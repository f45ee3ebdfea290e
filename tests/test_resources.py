"""Tests for mpray.resources against fake cgroup trees, fake /proc files and fake environments."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mpray import resources as res
from mpray.resources import (default_object_store_bytes, detect_gpus, detect_memory_bytes,
                             detect_num_cpus, parse_size)

GIB = 2**30
MIB = 2**20


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def cg(tmp_path: Path) -> Path:
    """An empty cgroup mount; tests add the files they need."""
    root = tmp_path / "cgroup"
    root.mkdir()
    return root


@pytest.fixture
def no_proc(tmp_path: Path) -> str:
    """A /proc/self/cgroup that does not exist: only the mount root is consulted."""
    return str(tmp_path / "missing-proc-cgroup")


def cpus(cg: Path, proc: str, env: dict[str, str] | None = None, affinity: int = 16) -> int:
    return detect_num_cpus(env=env or {}, affinity=affinity, cgroup_root=str(cg), proc_cgroup=proc)


# ----------------------------------------------------------------------------- CPUs

def test_no_limits_uses_affinity(cg: Path, no_proc: str) -> None:
    assert cpus(cg, no_proc, affinity=12) == 12


@pytest.mark.parametrize("cpu_max, expected", [
    ("max 100000", 16),         # unlimited
    ("150000 100000", 2),       # 1.5 CPUs round up
    ("50000 100000", 1),        # half a CPU is still one worker
    ("400000 100000", 4),
    ("800000 50000", 16),       # 16 CPUs of quota: affinity is not exceeded
    ("3200000 100000", 16),     # quota above affinity: affinity wins
    ("garbage", 16),            # unparsable: ignored
    ("0 100000", 16),           # nonsensical: ignored
])
def test_cgroup_v2_cpu_max(cg: Path, no_proc: str, cpu_max: str, expected: int) -> None:
    write(cg, "cpu.max", cpu_max + "\n")
    assert cpus(cg, no_proc) == expected


@pytest.mark.parametrize("quota, period, expected", [
    ("-1", "100000", 16), ("250000", "100000", 3), ("100000", "100000", 1), ("x", "100000", 16),
])
def test_cgroup_v1_cfs_quota(cg: Path, no_proc: str, quota: str, period: str,
                             expected: int) -> None:
    write(cg, "cpu/cpu.cfs_quota_us", quota)
    write(cg, "cpu/cpu.cfs_period_us", period)
    assert cpus(cg, no_proc) == expected


def test_nested_cgroup_takes_smallest_limit_on_path(cg: Path, tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/job/step\n")
    write(cg, "cpu.max", "max 100000")
    write(cg, "job/cpu.max", "300000 100000")        # parent: 3 CPUs
    write(cg, "job/step/cpu.max", "max 100000")      # own cgroup: unlimited
    write(cg, "other/cpu.max", "100000 100000")      # sibling: must be ignored
    assert cpus(cg, str(proc)) == 3


def test_v1_path_from_proc_self_cgroup(cg: Path, tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/x\n3:cpu,cpuacct:/slurm/job_1\n0::/\n")
    write(cg, "cpu/slurm/job_1/cpu.cfs_quota_us", "200000")
    write(cg, "cpu/slurm/job_1/cpu.cfs_period_us", "100000")
    assert cpus(cg, str(proc)) == 2


def test_container_path_missing_under_mount_falls_back_to_root(cg: Path, tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/docker/abcdef\n")  # host path, not visible inside the container
    write(cg, "cpu.max", "200000 100000")
    assert cpus(cg, str(proc)) == 2


@pytest.mark.parametrize("env, expected", [
    ({"SLURM_CPUS_PER_TASK": "4"}, 4),
    ({"SLURM_CPUS_PER_TASK": "4", "SLURM_CPUS_ON_NODE": "16"}, 4),
    ({"SLURM_CPUS_ON_NODE": "8"}, 8),
    ({"SLURM_CPUS_ON_NODE": "16", "SLURM_NTASKS_PER_NODE": "4"}, 4),
    ({"SLURM_CPUS_ON_NODE": "16", "SLURM_TASKS_PER_NODE": "2(x3),1"}, 8),
    ({"SLURM_CPUS_ON_NODE": "16", "SLURM_TASKS_PER_NODE": "1"}, 16),
    ({"SLURM_CPUS_ON_NODE": "3", "SLURM_NTASKS_PER_NODE": "8"}, 1),   # never below 1
    ({"SLURM_CPUS_ON_NODE": "64"}, 16),                                # affinity still caps
    ({"SLURM_CPUS_PER_TASK": "bogus", "SLURM_CPUS_ON_NODE": "6"}, 6),  # bad value ignored
    ({"SLURM_CPUS_PER_TASK": "0"}, 16),
])
def test_slurm(cg: Path, no_proc: str, env: dict[str, str], expected: int) -> None:
    assert cpus(cg, no_proc, env=env, affinity=16) == expected


def test_minimum_of_all_limits(cg: Path, no_proc: str) -> None:
    write(cg, "cpu.max", "600000 100000")
    assert cpus(cg, no_proc, env={"SLURM_CPUS_PER_TASK": "8"}, affinity=10) == 6
    assert cpus(cg, no_proc, env={"SLURM_CPUS_PER_TASK": "5"}, affinity=10) == 5
    assert cpus(cg, no_proc, env={"SLURM_CPUS_PER_TASK": "8"}, affinity=4) == 4


@pytest.mark.parametrize("value, expected", [("32", 32), (" 3 ", 3), ("1", 1)])
def test_mpray_num_cpus_overrides_everything(cg: Path, no_proc: str, value: str,
                                             expected: int) -> None:
    write(cg, "cpu.max", "100000 100000")
    env = {"MPRAY_NUM_CPUS": value, "SLURM_CPUS_PER_TASK": "2"}
    assert cpus(cg, no_proc, env=env, affinity=4) == expected


def test_empty_mpray_num_cpus_is_unset(cg: Path, no_proc: str) -> None:
    assert cpus(cg, no_proc, env={"MPRAY_NUM_CPUS": ""}, affinity=5) == 5


@pytest.mark.parametrize("bad", ["0", "-2", "abc", "2.5", "1e3", "+4", "²"])
def test_mpray_num_cpus_bad_value(cg: Path, no_proc: str, bad: str) -> None:
    with pytest.raises(ValueError, match="MPRAY_NUM_CPUS") as info:
        cpus(cg, no_proc, env={"MPRAY_NUM_CPUS": bad})
    assert repr(bad) in str(info.value)


def test_never_less_than_one(cg: Path, no_proc: str) -> None:
    assert cpus(cg, no_proc, affinity=0) == 1


def test_real_system_smoke() -> None:
    assert detect_num_cpus(env={}) >= 1
    assert detect_memory_bytes() > 0


# ----------------------------------------------------------------------------- memory

@pytest.fixture
def meminfo(tmp_path: Path) -> str:
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       65536000 kB\nMemFree:         1000000 kB\n"
                    "MemAvailable:   32000000 kB\nCached:          500000 kB\n")
    return str(path)


def mem(cg: Path, meminfo: str, proc: str) -> int:
    return detect_memory_bytes(cgroup_root=str(cg), meminfo=meminfo, proc_cgroup=proc)


def test_memory_without_cgroup_limits(cg: Path, meminfo: str, no_proc: str) -> None:
    assert mem(cg, meminfo, no_proc) == 32000000 * 1024


def test_memory_falls_back_to_memfree(cg: Path, tmp_path: Path, no_proc: str) -> None:
    path = tmp_path / "old-meminfo"
    path.write_text("MemTotal: 100 kB\nMemFree: 40 kB\n")
    assert mem(cg, str(path), no_proc) == 40 * 1024


def test_memory_v2_limit_minus_usage(cg: Path, meminfo: str, no_proc: str) -> None:
    write(cg, "memory.max", str(8 * GIB))
    write(cg, "memory.current", str(3 * GIB))
    write(cg, "memory.stat", f"anon 123\ninactive_file {1 * GIB}\nactive_file 5\n")
    assert mem(cg, meminfo, no_proc) == 8 * GIB - 2 * GIB  # inactive cache is reclaimable


def test_memory_v2_max_is_unlimited(cg: Path, meminfo: str, no_proc: str) -> None:
    write(cg, "memory.max", "max")
    write(cg, "memory.current", str(3 * GIB))
    assert mem(cg, meminfo, no_proc) == 32000000 * 1024


def test_memory_v1_limit_and_huge_value(cg: Path, meminfo: str, tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/job\n0::/\n")
    write(cg, "memory/memory.limit_in_bytes", "9223372036854771712")  # v1 "unlimited"
    write(cg, "memory/memory.usage_in_bytes", str(10 * GIB))
    write(cg, "memory/job/memory.limit_in_bytes", str(4 * GIB))
    write(cg, "memory/job/memory.usage_in_bytes", str(1 * GIB))
    write(cg, "memory/job/memory.stat", f"cache 1\ntotal_inactive_file {512 * MIB}\n")
    assert mem(cg, meminfo, str(proc)) == 4 * GIB - 512 * MIB


def test_memory_meminfo_smaller_than_cgroup(cg: Path, meminfo: str, no_proc: str) -> None:
    write(cg, "memory.max", str(100 * GIB))
    write(cg, "memory.current", "0")
    assert mem(cg, meminfo, no_proc) == 32000000 * 1024


def test_memory_never_negative(cg: Path, meminfo: str, no_proc: str) -> None:
    write(cg, "memory.max", str(1 * GIB))
    write(cg, "memory.current", str(2 * GIB))
    assert mem(cg, meminfo, no_proc) == 0


def test_object_store_default() -> None:
    assert default_object_store_bytes(10 * GIB) == int(10 * GIB * 0.3)
    assert default_object_store_bytes(100 * MIB) == 64 * MIB   # clamped up
    assert default_object_store_bytes(0) == 64 * MIB
    assert default_object_store_bytes() >= 64 * MIB


# ----------------------------------------------------------------------------- GPUs

@pytest.mark.parametrize("visible, expected", [
    ("", []), ("NoDevFiles", []), ("0", ["0"]), ("0,1,3", ["0", "1", "3"]),
    (" 2 , 5 ", ["2", "5"]), ("-1", []), ("0,-1,2", ["0"]),
    ("GPU-6f1c2a3b-aaaa,GPU-77", ["GPU-6f1c2a3b-aaaa", "GPU-77"]),
])
def test_gpus_from_cuda_visible_devices(visible: str, expected: list[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", _forbidden_run)
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": visible, "PATH": "/usr/bin"}) == expected


def _forbidden_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("nvidia-smi must not be called")


def _fake_nvidia_smi(tmp_path: Path) -> str:
    """A PATH holding an executable named nvidia-smi (never actually run by these tests)."""
    exe = tmp_path / "bin" / "nvidia-smi"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(0o755)
    return str(exe.parent)


def test_gpus_without_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", _forbidden_run)
    assert detect_gpus({"PATH": str(tmp_path)}) == []


def test_gpus_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _fake_nvidia_smi(tmp_path)
    calls: list[tuple[list[str], float]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append((cmd, kwargs["timeout"]))  # type: ignore[arg-type]
        return subprocess.CompletedProcess(cmd, 0, stdout="0\n1\n\n2\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert detect_gpus({"PATH": path}) == ["0", "1", "2"]
    (cmd, timeout), = calls
    assert cmd[0].endswith("nvidia-smi") and "--query-gpu=index" in cmd
    assert "--format=csv,noheader" in cmd and timeout == 5


@pytest.mark.parametrize("outcome", [
    subprocess.TimeoutExpired("nvidia-smi", 5), OSError("exec format error"),
    subprocess.CompletedProcess([], 6, stdout="No devices were found\n", stderr=""),
])
def test_gpus_nvidia_smi_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  outcome: object) -> None:
    path = _fake_nvidia_smi(tmp_path)

    def fake_run(cmd: list[str], **kwargs: object) -> object:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert detect_gpus({"PATH": path}) == []


# ----------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("text, expected", [
    ("100000", 100000), ("0", 0), ("512MB", 512 * 10**6), ("512 MB", 512 * 10**6),
    ("2GiB", 2 * GIB), ("2gib", 2 * GIB), ("1.5GiB", 3 * GIB // 2), ("1e9", 10**9),
    ("2.5e3", 2500), ("1E6B", 10**6), ("64k", 64 * 1024), ("4G", 4 * GIB),
    ("3 KiB", 3072), ("1TB", 10**12), ("1_000", 1000), ("  7b ", 7),
    ("123456789012345678901234567890", 123456789012345678901234567890),
    ("1.9", 1), (4096, 4096),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "abc", "-5", "12XB", "1.2.3GB", "GiB", "1e", "nan",
                                 "inf", "1 0", ".", "1e999999999", -1, True])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


def test_module_constants() -> None:
    assert res.MIN_OBJECT_STORE_BYTES == 64 * MIB
    assert res.OBJECT_STORE_FRACTION == 0.3
