"""Runtime environments, as Ray's ``runtime_env`` for what a shared file system allows:
``env_vars``, ``working_dir`` and ``py_modules`` as local paths (under MPI every rank
must see the same paths).  Every other key (``pip``, ``conda``, ``container``, ...)
is refused, naming it: mpray installs nothing.

Data flow::

    init(runtime_env=E)             ─▶ node_info ─▶ every worker applies E at start, for
                                       good (a job's environment)
    f.options(runtime_env=T)        ─▶ the function is registered with T around it (an
                                       envelope.py: its own id); the worker enters T before
                                       it reads the task's arguments (T's variables set,
                                       its working_dir the cwd, it and py_modules first
                                       on sys.path) and restores all after the task
    Cls.options(runtime_env=T)      ─▶ the creation options carry T: the actor's process
                                       applies it for good before anything else
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

SUPPORTED = ("env_vars", "working_dir", "py_modules")


class RuntimeEnv(dict):
    """``mpray.runtime_env.RuntimeEnv(env_vars=..., working_dir=..., py_modules=...)``:
    a checked dict, as Ray's."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(check(kwargs) or {})


def check(env: Any) -> dict | None:
    """The runtime_env, checked: a dict of the supported keys (None: empty)."""
    if env is None:
        return None
    if not isinstance(env, dict):
        raise TypeError(f"runtime_env must be a dict, not {type(env).__name__}")
    for key in env:
        if key not in SUPPORTED:
            raise NotImplementedError(
                f"runtime_env[{key!r}] is not supported by mpray: it installs nothing "
                f"(supported: env_vars, and working_dir and py_modules as local paths on "
                f"a file system every rank sees)")
    out: dict = {}
    env_vars = env.get("env_vars")
    if env_vars:
        if not isinstance(env_vars, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
            raise TypeError("runtime_env['env_vars'] must be a dict of str to str, not "
                            f"{env_vars!r}")
        out["env_vars"] = dict(env_vars)
    wd = env.get("working_dir")
    if wd is not None:
        out["working_dir"] = _local_path("working_dir", wd, directory=True)
    mods = env.get("py_modules")
    if mods:
        if not isinstance(mods, (list, tuple)):
            raise TypeError(f"runtime_env['py_modules'] must be a list, not {mods!r}")
        out["py_modules"] = [_local_path("py_modules", m) for m in mods]
    return out or None


def _local_path(key: str, path: Any, directory: bool = False) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"runtime_env[{key!r}] takes local paths, not {path!r}")
    path = os.fspath(path)
    if "://" in path:
        raise NotImplementedError(f"runtime_env[{key!r}]={path!r}: mpray takes local "
                                  "paths only (no remote URIs)")
    full = os.path.abspath(path)
    if not os.path.exists(full) or (directory and not os.path.isdir(full)):
        raise ValueError(f"runtime_env[{key!r}]: {path!r} is not an existing "
                         f"{'directory' if directory else 'path'}")
    return full


def _import_roots(env: dict) -> list[str]:
    """What goes first on sys.path: the working_dir, and each module's parent (a
    package directory or a .py file is importable by its name)."""
    roots = [env["working_dir"]] if "working_dir" in env else []
    for m in env.get("py_modules", ()):
        roots.append(os.path.dirname(m.rstrip(os.sep)))
    return roots


def apply(env: dict | None) -> None:
    """Apply for good (a worker's job environment, an actor's process)."""
    if not env:
        return
    os.environ.update(env.get("env_vars", {}))
    if "working_dir" in env:
        os.chdir(env["working_dir"])
    for root in reversed(_import_roots(env)):
        if root not in sys.path:
            sys.path.insert(0, root)


def save(env: dict) -> tuple:
    return ({k: os.environ.get(k) for k in env.get("env_vars", {})}, os.getcwd(),
            list(sys.path))


def restore(saved: tuple) -> None:
    env_vars, cwd, path = saved
    for k, v in env_vars.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    os.chdir(cwd)
    sys.path[:] = path


@contextlib.contextmanager
def applied(env: dict | None):
    """Apply for a while; what was there before comes back after it."""
    if not env:
        yield
        return
    saved = save(env)
    try:
        apply(env)
        yield
    finally:
        restore(saved)
