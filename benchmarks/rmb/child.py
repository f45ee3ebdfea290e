"""The child process of one side: load ray_perf (real Ray, or mpray under the
shim), hook the runner into it, run the segmented main(), and write events as
JSON lines to the file the parent follows."""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback

from rmb import shim
from rmb.runner import RestartChild, Runner
from rmb.segments import plan, transformed_main, wheel_paths

EXIT_RESTART = 4  # a figure timed out: the parent starts a fresh child


def _hook(runner: Runner, perf, pl: dict, paths: dict) -> dict:
    """Route ray_perf's timeit (and the client module's) through the runner,
    define the segment hooks and ``_mb_main``; return ray_perf's namespace."""
    helpers = sys.modules["ray._private.ray_microbenchmark_helpers"]
    runner.real_timeit = helpers.timeit
    ns = perf.__dict__
    ns["timeit"] = runner.timeit
    client = sys.modules.get(shim.CLIENT_MODULE)
    if client is not None and hasattr(client, "timeit"):
        client.timeit = runner.timeit
    ns.update(__mb_enter__=runner.enter, __mb_want__=runner.want,
              __mb_fail__=runner.fail, __mb_leave__=runner.leave)
    signal.signal(signal.SIGALRM, runner.on_alarm)
    exec(transformed_main(pl, paths["perf"]), ns)
    return ns


def _restart_exit(perf, out) -> None:
    """Best effort: let the runtime clean up, but never wait on it for long."""
    signal.signal(signal.SIGALRM, lambda *_a: os._exit(EXIT_RESTART))
    signal.setitimer(signal.ITIMER_REAL, 20)
    try:
        perf.ray.shutdown()
    except BaseException:  # noqa: BLE001
        pass
    out.close()
    os._exit(EXIT_RESTART)


def child_main(side: str, opts: dict, events_path: str) -> int:
    out = open(events_path, "a", buffering=1)

    def emit(**rec):
        out.write(json.dumps(rec) + "\n")
        out.flush()

    try:
        paths = wheel_paths()
        pl = plan(paths)
        loaded = shim.load(side, paths, opts["mpray_path"])
    except BaseException as e:  # noqa: BLE001
        emit(ev="fatal", error=f"cannot load ray_perf for {side}: {type(e).__name__}: {e}",
             traceback=traceback.format_exc())
        return 2
    perf = loaded["perf"]
    emit(ev="meta", side=side, version=loaded["version"], pid=os.getpid(),
         perf=paths["perf"], dropped=pl["dropped"],
         **{k: v for k, v in loaded.items() if k not in ("perf", "version")})
    runner = Runner(pl, opts, emit)
    ns = _hook(runner, perf, pl, paths)
    try:
        ns["_mb_main"]()
    except RestartChild as e:
        emit(ev="restart", seg=e.seg, phase=e.phase)
        _restart_exit(perf, out)
    except BaseException as e:  # noqa: BLE001 - outside every segment
        emit(ev="fatal", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        return 3
    finally:
        runner.disarm()
    emit(ev="done")
    out.close()
    return 0
