"""Loading ray_perf in the child: under real Ray, or with mpray standing in
for ``ray`` (``sys.modules["ray"]`` is the mpray package, ``ray._private`` an
empty package, and the wheel's helper modules are loaded under that shim).
Nothing in mpray is patched."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

CLIENT_MODULE = "ray._private.ray_client_microbenchmark"


def _load_file(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def _alias_ray_to_mpray(mpray) -> None:
    """``ray`` is mpray, ``ray.X`` every loaded ``mpray.X``, and ``ray._private``
    an empty package."""
    sys.modules["ray"] = mpray
    for k, v in list(sys.modules.items()):
        if k.startswith("mpray."):
            sys.modules["ray" + k[len("mpray"):]] = v
    priv = types.ModuleType("ray._private")
    priv.__path__ = []  # a package with no files of its own
    priv.__package__ = "ray._private"
    sys.modules["ray._private"] = priv


def install_mpray_shim(paths: dict, mpray_path: str) -> dict:
    """Make `import ray` (and ray_perf's helper imports) resolve to mpray."""
    sys.path.insert(0, mpray_path)
    import mpray

    notes = {}
    if not hasattr(mpray, "util"):
        notes["shim_note"] = ("`import mpray` does not load mpray.util, so `ray.util` would be "
                              "an AttributeError after a bare `import ray`; the shim imports "
                              "mpray.util (ray_perf uses ray.util.placement_group)")
    import mpray.util  # noqa: F401
    _alias_ray_to_mpray(mpray)
    # plain Python (numpy, time); its `import ray` is only for ray_setup_and_teardown
    _load_file("ray._private.ray_microbenchmark_helpers", paths["helpers"])
    notes.update(load_client_module(paths, _load_file))
    perf = _load_file("ray._private.ray_perf", paths["perf"])
    notes["mpray_file"] = mpray.__file__
    return {"perf": perf, "version": getattr(mpray, "__version__", "?"), **notes}


def load_client_module(paths: dict, loader) -> dict:
    """Load ray_client_microbenchmark (ray_perf imports it at module level).

    It needs ``ray.util.client`` (and with it ``grpc``, which a plain
    ``pip install ray`` lacks: that is ``ray[client]``).  If it cannot be
    imported, a stand-in whose ``main`` raises that ImportError takes its place,
    so that only the client figures fail, with the reason."""
    try:
        if not os.path.exists(paths["client"]):
            raise ModuleNotFoundError(f"{paths['client']} not in the wheel")
        loader(CLIENT_MODULE, paths["client"])
        return {}
    except Exception as e:  # noqa: BLE001 - reported by the client figures
        text = f"{type(e).__name__}: {e}"
    stub = types.ModuleType(CLIENT_MODULE)

    def main(results=None, _text=text):
        raise ImportError(f"{CLIENT_MODULE} could not be imported: {_text}")

    stub.main = main
    sys.modules[CLIENT_MODULE] = stub
    return {"client_import_error": text}


def load_real_ray(paths: dict) -> dict:
    import ray

    notes = load_client_module(paths, lambda name, _path: importlib.import_module(name))
    perf = importlib.import_module("ray._private.ray_perf")
    if os.path.realpath(perf.__file__) != os.path.realpath(paths["perf"]):
        raise RuntimeError(f"ray_perf imported from {perf.__file__}, expected {paths['perf']}")
    return {"perf": perf, "version": ray.__version__, **notes}


def load(side: str, paths: dict, mpray_path: str) -> dict:
    """ray_perf for ``side`` ("ray" or "mpray"): {"perf", "version", notes...}."""
    return install_mpray_shim(paths, mpray_path) if side == "mpray" else load_real_ray(paths)
