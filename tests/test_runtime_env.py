"""runtime_env, from Ray's documented behaviour for what a shared file system allows:
``env_vars``, ``working_dir`` and ``py_modules`` as local paths, for tasks, actors and
the whole job; everything else is refused, naming the key."""

from __future__ import annotations

import os
import pathlib

import pytest

import mpray
from mpray.runtime_env import RuntimeEnv


@mpray.remote
def env_of(*names):
    return [os.environ.get(n) for n in names], os.getcwd(), os.getpid()


@mpray.remote
def imported(module):
    import importlib

    return importlib.import_module(module).VALUE


@mpray.remote
class EnvActor:
    def env(self, name):
        return os.environ.get(name), os.getcwd()


@pytest.fixture
def one_worker(ray_factory):
    """One CPU: every task runs on the same worker, so what a task leaves shows."""
    ray_factory(num_cpus=1)


def test_env_vars_are_set_for_the_task_and_restored_after_it(one_worker):
    os.environ.pop("MPRAY_TEST_VAR", None)
    task = env_of.options(runtime_env={"env_vars": {"MPRAY_TEST_VAR": "set"}})
    (value,), _cwd, pid = mpray.get(task.remote("MPRAY_TEST_VAR"), timeout=30)
    assert value == "set"
    (after,), _cwd, pid2 = mpray.get(env_of.remote("MPRAY_TEST_VAR"), timeout=30)
    assert after is None and pid2 == pid  # the same worker, its environment restored


def test_working_dir_is_the_cwd_and_importable(one_worker, tmp_path):
    (tmp_path / "wd_module_a.py").write_text("VALUE = 'from working_dir'\n")
    env = {"working_dir": str(tmp_path)}
    _v, cwd, _pid = mpray.get(env_of.options(runtime_env=env).remote(), timeout=30)
    assert cwd == str(tmp_path)
    assert mpray.get(imported.options(runtime_env=env).remote("wd_module_a"),
                     timeout=30) == "from working_dir"
    _v, cwd_after, _pid = mpray.get(env_of.remote(), timeout=30)
    assert cwd_after != str(tmp_path)


def test_py_modules_are_importable(one_worker, tmp_path):
    pkg = tmp_path / "pymod_pkg_b"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VALUE = 7\n")
    env = {"py_modules": [str(pkg)]}
    assert mpray.get(imported.options(runtime_env=env).remote("pymod_pkg_b"), timeout=30) == 7


def test_an_actor_keeps_its_runtime_env(ray_start, tmp_path):
    a = EnvActor.options(runtime_env=RuntimeEnv(env_vars={"WHO": "actor"},
                                                working_dir=str(tmp_path))).remote()
    assert mpray.get(a.env.remote("WHO"), timeout=30) == ("actor", str(tmp_path))
    assert mpray.get(a.env.remote("WHO"), timeout=30) == ("actor", str(tmp_path))


def test_the_jobs_runtime_env_applies_everywhere_and_tasks_add_to_it(ray_factory):
    ray_factory(num_cpus=1, runtime_env={"env_vars": {"JOB": "j", "BOTH": "job"}})
    vals, _cwd, _pid = mpray.get(env_of.remote("JOB", "BOTH"), timeout=30)
    assert vals == ["j", "job"]
    task = env_of.options(runtime_env={"env_vars": {"BOTH": "task"}})
    assert mpray.get(task.remote("JOB", "BOTH"), timeout=30)[0] == ["j", "task"]
    assert mpray.get(env_of.remote("JOB", "BOTH"), timeout=30)[0] == ["j", "job"]


@pytest.mark.parametrize("env, error, match", [
    ({"pip": ["requests"]}, NotImplementedError, "'pip'"),
    ({"conda": "env"}, NotImplementedError, "'conda'"),
    ({"container": {"image": "x"}}, NotImplementedError, "'container'"),
    ({"working_dir": "s3://bucket/x.zip"}, NotImplementedError, "local"),
    ({"working_dir": "/no/such/dir/anywhere"}, ValueError, "not an existing"),
    ({"env_vars": {"A": 1}}, TypeError, "str to str"),
    ({"py_modules": "x"}, TypeError, "list"),
    ("not a dict", TypeError, "dict"),
])
def test_what_mpray_cannot_do_is_refused_naming_it(env, error, match):
    with pytest.raises(error, match=match):
        env_of.options(runtime_env=env)
    with pytest.raises(error, match=match):
        EnvActor.options(runtime_env=env)


def test_init_refuses_an_unsupported_runtime_env():
    with pytest.raises(NotImplementedError, match="'pip'"):
        mpray.init(num_cpus=1, runtime_env={"pip": ["x"]})
    assert not mpray.is_initialized()


def test_a_path_is_taken_as_absolute(one_worker, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    env = RuntimeEnv(working_dir="sub")
    assert env["working_dir"] == str(pathlib.Path(tmp_path, "sub"))
