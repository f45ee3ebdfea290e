"""The per-peer worker subprocess (``compare.py --_worker PEER``).

It runs the figure groups in order and writes one JSON line per result to the
results file: ``meta``, ``{key, samples}``, ``{key, error}``, ``{group, skip}``,
``{group, error}``, ``fatal``, and ``done`` at the end.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import traceback

from bench import fig_actors as A
from bench import fig_objects as O
from bench import fig_tasks as T
from bench.backends import make_backend
from bench.measure import FigError, FigureTimeout, Skip
from bench.revs import check_import

# The groups that run while the peer is started, in this order.  The large puts
# come before the task figures, while the store's space is still untouched, so
# that "fresh space" means it; the task figures below them reuse space.
RUNNING_GROUPS = (
    ("idle_memory", T.fig_idle_memory),
    ("noop_rtt_us", T.fig_noop_rtt),
    ("submit_get_rate", T.fig_submit_get),
    ("nested_rate", T.fig_nested),
    ("wait_rate", T.fig_wait),
    ("generator_rate", T.fig_generator),
    ("small_put_get", O.fig_small_put_get),
    ("mid_put_get", O.fig_mid_put_get),
    ("big_put_get", O.fig_big_put_get),
    ("arg_mid_ms", T.fig_arg_mid),
    ("ret_mid_ms", T.fig_ret_mid),
    ("actor_rtt_us", A.fig_actor_rtt),
    ("actor_async_rate", A.fig_actor_async),
    ("actor_nn_rate", A.fig_actor_nn),
    ("actor_create_rate", A.fig_actor_create),
    ("actor_arg_mid_ms", A.fig_actor_arg_mid),
)
# Every group, in the order they run (the choices of --only).
GROUPS = ("init_shutdown",) + tuple(name for name, _ in RUNNING_GROUPS)


class GroupRunner:
    """Runs one figure group under a time limit and emits its results."""

    def __init__(self, peer, p, out):
        self.peer, self.p, self.out = peer, p, out
        signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum, frame):
        raise FigureTimeout(f"figure exceeded {self.p['figure_timeout']} s")

    def emit(self, **rec):
        self.out.write(json.dumps(rec) + "\n")
        self.out.flush()

    def say(self, text):
        print(f"[{self.peer}] {text}", file=sys.stderr, flush=True)

    def run(self, name, fn, B):
        """Run one figure group, emit its results (or skip/error)."""
        if self.p["only"] and name not in self.p["only"]:
            return None
        gc.collect()
        signal.alarm(self.p["figure_timeout"])
        try:
            res = fn(B, self.p)
        except Skip as e:
            self.emit(group=name, skip=str(e))
            return None
        except BaseException as e:  # noqa: BLE001 - report, keep going
            if isinstance(e, KeyboardInterrupt):
                raise
            self.emit(group=name, error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc())
            self.say(f"{name} failed:\n{traceback.format_exc()}")
            return None
        finally:
            signal.alarm(0)
        self._emit_result(name, res)
        return res

    def _emit_result(self, name, res):
        if not isinstance(res, dict):
            res = {name: res}
        for key, samples in res.items():
            if isinstance(samples, FigError):
                self.emit(key=key, error=samples.error, traceback=samples.traceback)
                self.say(f"{key} failed:\n{samples.traceback}")
            else:
                self.emit(key=key, samples=samples)
        self.say(f"{name} done")


def _load(run, peer, mpray_root):
    """The peer's backend, or None after a ``fatal`` record."""
    try:
        B = make_backend(peer)
        if mpray_root and B.ray_api:
            check_import(B.ray, mpray_root)
    except BaseException as e:  # noqa: BLE001
        run.emit(fatal=f"cannot load peer {peer!r}: {type(e).__name__}: {e}",
                 traceback=traceback.format_exc())
        return None
    if B.module_file():
        run.say(f"imported {B.modname} from {B.module_file()}")
    run.emit(meta={"peer": peer, "version": B.version(),
                   "module_file": B.module_file()})
    return B


def worker_main(peer, p, results_path, mpray_root=None):
    out = open(results_path, "a", buffering=1)
    run = GroupRunner(peer, p, out)
    B = _load(run, peer, mpray_root)
    if B is None:
        return 2
    run.run("init_shutdown", T.fig_init_shutdown, B)
    gc.collect()
    try:
        B.start()
    except BaseException as e:  # noqa: BLE001
        run.emit(fatal=f"init failed: {type(e).__name__}: {e}",
                 traceback=traceback.format_exc())
        return 3
    try:
        for name, fn in RUNNING_GROUPS:
            run.run(name, fn, B)
    finally:
        try:
            B.stop()
        except BaseException as e:  # noqa: BLE001
            run.emit(error_shutdown=f"{type(e).__name__}: {e}",
                     traceback=traceback.format_exc())
    run.emit(done=True)
    out.close()
    return 0
