"""Backends: a uniform submit/get interface over the peers.

``mpray`` and ``ray`` (and ``mpray@REV``) share one implementation, parameterised
by the module; ``multiprocessing.Pool`` and ``ProcessPoolExecutor`` get a thin
submit/get adapter, so a task figure runs the same loop on every peer.
"""

from __future__ import annotations

import importlib
import platform

from bench import bodies
from bench.params import PEER_ENV, RAY_API_PEERS


def _pickle_bodies_by_value(modname):
    """Have the peer's cloudpickle ship ``bench.bodies`` by value.

    Ray's workers are fresh interpreters that need not find ``bench``; by value
    is also how the bodies travelled when they were defined in ``__main__``."""
    for name in (f"{modname}.cloudpickle", "cloudpickle"):
        try:
            cp = importlib.import_module(name)
        except ImportError:
            continue
        cp.register_pickle_by_value(bodies)


class RayAPIBackend:
    """mpray and ray: the same code, parameterised by the module."""

    ray_api = True

    def __init__(self, modname: str):
        self.modname = modname
        self.ray = importlib.import_module(modname)
        self.fns = {}
        _pickle_bodies_by_value(modname)

    def version(self):
        return getattr(self.ray, "__version__", "?")

    def module_file(self):
        return getattr(self.ray, "__file__", None)

    def init_kwargs(self):
        kw = {"num_cpus": 2}
        if self.modname == "ray":
            kw.update(include_dashboard=False, logging_level="WARNING")
        return kw

    def start(self):
        self.ray.init(**self.init_kwargs())
        r = self.ray.remote
        self.fns = {name: r(fn) for name, fn in bodies.TASKS.items()}
        self.fns.update(nested=r(bodies._nested), actor=r(bodies._BenchActor),
                        caller=r(bodies._BenchCaller), stream=r(bodies._stream))

    def stop(self):
        self.ray.shutdown()
        self.fns = {}

    def submitter(self, name):
        return self.fns[name].remote

    def get(self, h):
        return self.ray.get(h)

    def get_many(self, hs):
        return self.ray.get(hs)


class _StdlibBackend:
    """What Pool and ProcessPoolExecutor share: no Ray API, the stdlib's version."""

    ray_api = False

    def version(self):
        return platform.python_version()

    def module_file(self):
        return None

    def submitter(self, name):
        return self._submitter(bodies.TASKS[name])


class PoolBackend(_StdlibBackend):
    def __init__(self):
        import multiprocessing

        self.ctx = multiprocessing.get_context("fork")
        self.pool = None

    def start(self):
        self.pool = self.ctx.Pool(2)

    def stop(self):
        self.pool.close()
        self.pool.join()
        self.pool = None

    def _submitter(self, fn):
        apply_async = self.pool.apply_async
        return lambda *a: apply_async(fn, a)

    def get(self, h):
        return h.get()

    def get_many(self, hs):
        return [h.get() for h in hs]


class FuturesBackend(_StdlibBackend):
    def __init__(self):
        import concurrent.futures as cf

        self.cf = cf
        self.ex = None

    def start(self):
        self.ex = self.cf.ProcessPoolExecutor(2)

    def stop(self):
        self.ex.shutdown(wait=True)
        self.ex = None

    def _submitter(self, fn):
        submit = self.ex.submit
        return lambda *a: submit(fn, *a)

    def get(self, h):
        return h.result()

    def get_many(self, hs):
        return [h.result() for h in hs]


def make_backend(peer):
    """The backend of a peer; ``mpray@REV`` is mpray (imported from REV's tree)."""
    if peer in RAY_API_PEERS or peer.startswith("mpray@") or peer in PEER_ENV:
        return RayAPIBackend(peer.partition("@")[0].partition("-")[0])
    if peer == "pool":
        return PoolBackend()
    if peer == "futures":
        return FuturesBackend()
    raise ValueError(f"unknown peer {peer!r}")
