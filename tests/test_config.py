"""Settings: init() arguments win over MPRAY_* variables, which win over detection."""

from __future__ import annotations

import pytest

from mpray import config as C

MB = 1024 * 1024


def test_environment_sets_every_numeric_setting():
    env = {"MPRAY_NUM_CPUS": "3", "MPRAY_OBJECT_STORE_MEMORY": "96MiB",
           "MPRAY_INLINE_MAX": "2048", "MPRAY_MAX_WORKERS": "7", "MPRAY_PIPELINE_DEPTH": "1",
           "MPRAY_LEASE_DEPTH": "0", "MPRAY_DIRECT_SLOTS": "4",
           "MPRAY_IDLE_WORKER_TIMEOUT": "2.5", "MPRAY_TMPDIR": "/var/tmp",
           "MPRAY_RESOURCES": '{"disk": 2}', "MPRAY_NUM_GPUS": "0",
           "MPRAY_WORKER_RING_BYTES": "70000", "MPRAY_SPIN_US": "0",
           "MPRAY_BACKEND": "local", "MPRAY_EXPORT_BYTES": "1MiB", "MPRAY_MPI_ARENA": "copy"}
    c = C.resolve({}, env)
    assert (c.num_cpus, c.object_store_memory, c.inline_max, c.max_workers) == (3, 96 * MB, 2048, 7)
    assert (c.pipeline_depth, c.lease_depth, c.direct_slots, c.spin_us) == (1, 0, 4, 0)
    assert c.idle_worker_timeout == 2.5 and c.tmpdir == "/var/tmp"
    assert c.resources == {"disk": 2.0} and c.num_gpus == 0
    assert c.worker_ring_bytes == 131072  # rounded up to a power of two
    assert (c.backend, c.export_bytes, c.mpi_arena) == ("local", MB, "copy")
    assert c.node_resources()["CPU"] == 3.0 and c.node_resources()["disk"] == 2.0


def test_arguments_win_over_environment():
    env = {"MPRAY_NUM_CPUS": "3", "MPRAY_OBJECT_STORE_MEMORY": "96MiB", "MPRAY_NUM_GPUS": "0"}
    env["MPRAY_SPIN_US"] = "10"
    c = C.resolve({"num_cpus": 1, "object_store_memory": 64 * MB, "num_gpus": 2,
                   "spin_us": 80}, env)
    assert (c.num_cpus, c.object_store_memory, c.num_gpus, c.spin_us) == (1, 64 * MB, 2, 80)
    assert c.gpu_ids == ["0", "1"]


def test_object_store_memory_takes_a_size_string_as_the_variable_does():
    c = C.resolve({"num_cpus": 1, "object_store_memory": "64MiB"}, {"MPRAY_NUM_GPUS": "0"})
    assert c.object_store_memory == 64 * MB


@pytest.mark.parametrize("args, env, message", [
    ({"num_cpus": -1}, {}, "num_cpus"),
    ({"num_gpus": 1.5}, {}, "num_gpus"),
    ({"object_store_memory": 1000}, {}, "object_store_memory"),
    ({"object_store_memory": "a lot"}, {}, "a lot"),
    ({"resources": {"CPU": 2}}, {}, "num_cpus/num_gpus"),
    ({"resources": {"disk": -1}}, {}, "disk"),
    ({}, {"MPRAY_RESOURCES": "{not json"}, "MPRAY_RESOURCES"),
    ({}, {"MPRAY_MAX_WORKERS": "many"}, "MPRAY_MAX_WORKERS"),
    ({}, {"MPRAY_OBJECT_STORE_MEMORY": "lots"}, "lots"),
    ({"backend": "cloud"}, {}, "MPRAY_BACKEND"),
    ({}, {"MPRAY_MPI_ARENA": "shared"}, "MPRAY_MPI_ARENA"),
])
def test_bad_settings_name_the_problem(args, env, message):
    with pytest.raises((ValueError, TypeError), match=message):
        C.resolve(args, {"MPRAY_NUM_GPUS": "0", **env})


def test_every_setting_has_an_environment_variable():
    short = {"object_spilling_directory": "MPRAY_SPILL_DIR"}  # (Ray's long init name)
    for name, var, _help in C.SETTINGS:
        assert var == short.get(name, "MPRAY_" + name.upper())
        assert hasattr(C.Config(), name) or name == "resources"


def test_spill_directory_setting(tmp_path):
    assert C.resolve({}, {}).object_spilling_directory == ""
    assert C.resolve({}, {"MPRAY_SPILL_DIR": str(tmp_path)}).object_spilling_directory \
        == str(tmp_path)
    assert C.resolve({"object_spilling_directory": "OFF"}, {}).object_spilling_directory \
        == "off"
    afile = tmp_path / "f"
    afile.write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        C.resolve({"object_spilling_directory": str(afile)}, {})
