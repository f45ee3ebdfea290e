#!/usr/bin/env python
"""Run Ray's own microbenchmark (``ray microbenchmark``) on Ray and on mpray.

Usage::

    python benchmarks/ray_microbenchmark.py [--sides ray,mpray] [--only SUBSTR]
                                            [--warmup-sleep S | --quick]
                                            [--figure-timeout S] [--json out.json]
                                            [--mpray-path DIR] [--list] [-v]
    python benchmarks/ray_microbenchmark.py --report out.json

The script behind ``ray microbenchmark`` is ``ray/_private/ray_perf.py`` in
the installed Ray wheel.  This file reads it from the wheel at run time
(located with ``importlib``; nothing of it is copied here) and runs its
``main()`` twice, each time in a fresh subprocess: once with real Ray, once
with mpray standing in for ``ray``.  Then it prints one table: figure, Ray's
rate, mpray's rate and the ratio mpray/ray.

How it runs ray_perf:

* ``main()`` is one long function, so one failing statement would end the
  run.  It is parsed with ``ast`` and cut into segments, each ending with a
  statement that produces figures (``results += timeit(...)``, or the call
  of the Ray-client benchmarks).  Each segment is wrapped in ``try`` (the
  function is compiled again from the wheel's own source lines, so closures,
  line numbers and tracebacks stay those of ray_perf).  A segment that fails
  marks its figures with the exception text, and the next segment runs.
  ``check_optimized_build()`` is left out: it only logs a warning about
  source builds and reads ``ray._raylet.OPTIMIZED``.
* Timing is Ray's own ``timeit`` from ``ray/_private/ray_microbenchmark_helpers.py``
  (the wheel's file, for both sides): sleep ``warmup_time_sec`` (10 s, Ray's
  default; ``--warmup-sleep``/``--quick`` change only this, the one knob the
  helper exposes), warm up 1 s, then 4 rounds of 2 s; mean ± sd of the rounds.
  A thin wrapper around it only counts the timed function's calls (for the
  hang diagnosis), applies ``--only``/``--skip`` and reports each figure.
* For mpray, ``sys.modules["ray"]`` is the ``mpray`` package (and ``ray.X``
  aliases every loaded ``mpray.X``), ``ray._private`` is an empty package,
  and the two helper modules are loaded from the wheel's files under that
  shim (``ray_microbenchmark_helpers`` is plain Python and needs no Ray
  runtime).  ``ray_client_microbenchmark`` is loaded the same way; if it
  cannot be imported under mpray, its ``main`` raises that import error, so
  the client figures report it.  Nothing in mpray is patched: a missing API
  fails with mpray's own AttributeError/TypeError.
* Every figure has a time limit (SIGALRM, ``--figure-timeout``; setup and the
  timed part each get one).  When it fires the figure is reported as a
  time-out, with how many calls of the timed function finished, and the child
  exits (the runtime may be wedged); a fresh child re-runs ray_perf's setup
  code but skips the figures already done (and a segment whose setup hung).
  If the child makes no progress at all for that limit plus a grace period,
  the parent kills it and everything it started (by PID) and continues the
  same way.
* ``--report out.json`` prints the table of an earlier ``--json`` run.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDES = ("ray", "mpray")
DEFAULT_WARMUP_SLEEP = 10  # ray_microbenchmark_helpers.timeit's warmup_time_sec
TIMED_SECONDS = 9  # its 1 s warm-up + 4 rounds of 2 s
WATCHDOG_GRACE = 60  # seconds beyond the figure limit before the child is killed
MAX_ATTEMPTS = 10  # child processes per side (a time-out or crash starts a fresh one)


# ---------------------------------------------------------------------------
# Locating ray_perf in the wheel and planning its segments (parent and child)
# ---------------------------------------------------------------------------


def wheel_paths() -> dict:
    """Files of the installed Ray wheel, found without importing ray."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ray is not installed (pip install ray)")
    root = list(spec.submodule_search_locations)[0]
    priv = os.path.join(root, "_private")
    paths = {
        "root": root,
        "perf": os.path.join(priv, "ray_perf.py"),
        "helpers": os.path.join(priv, "ray_microbenchmark_helpers.py"),
        "client": os.path.join(priv, "ray_client_microbenchmark.py"),
    }
    for key in ("perf", "helpers"):
        if not os.path.exists(paths[key]):
            raise RuntimeError(f"{paths[key]} not found in the installed Ray wheel")
    return paths


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Name):
            return f.id
        if isinstance(f, ast.Attribute):
            return f.attr
    return None


def _timeit_names(node: ast.AST) -> list[str]:
    """First arguments of timeit(...) calls under node, in source order."""
    found = []
    for n in ast.walk(node):
        if _call_name(n) in ("timeit", "asyncio_timeit") and n.args:
            a = n.args[0]
            name = a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) \
                else f"<figure at line {n.lineno}>"
            found.append((n.lineno, n.col_offset, name))
    return [name for _l, _c, name in sorted(found)]


def client_figures(client_src: str | None) -> list[str]:
    """Figures of ray_client_microbenchmark.main(), in the order it runs them
    (inspect.getmembers: benchmark_* functions sorted by name)."""
    if not client_src:
        return []
    tree = ast.parse(client_src)
    funcs = sorted((n for n in tree.body if isinstance(n, ast.FunctionDef)
                    and n.name.startswith("benchmark_")), key=lambda n: n.name)
    out = []
    for f in funcs:
        out += _timeit_names(f)
    return out


def plan(paths: dict) -> dict:
    """Cut ray_perf.main() into segments; return them with their figures."""
    with open(paths["perf"]) as fh:
        perf_src = fh.read()
    client_src = None
    if os.path.exists(paths["client"]):
        with open(paths["client"]) as fh:
            client_src = fh.read()
    cfigs = client_figures(client_src)
    tree = ast.parse(perf_src, filename=paths["perf"])
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    if not mains:
        raise RuntimeError(f"no main() in {paths['perf']}")
    main = mains[0]
    segments, cur, dropped = [], [], []
    body = list(main.body)
    ret = None
    if body and isinstance(body[-1], ast.Return):
        ret = body.pop()
    for st in body:
        if isinstance(st, ast.Expr) and _call_name(st.value) == "check_optimized_build":
            dropped.append(f"line {st.lineno}: check_optimized_build()")
            continue
        cur.append(st)
        figs = _timeit_names(st)
        for n in ast.walk(st):
            if _call_name(n) == "client_microbenchmark_main":
                figs += cfigs
        if figs:
            segments.append({"stmts": cur, "figures": figs})
            cur = []
    if cur:
        segments.append({"stmts": cur, "figures": []})
    return {"tree": tree, "main": main, "ret": ret, "segments": segments,
            "dropped": dropped, "perf_src": perf_src}


def figure_list(pl: dict) -> list[tuple[str, int]]:
    return [(f, i) for i, s in enumerate(pl["segments"]) for f in s["figures"]]


def selected(name: str, only: list[str], skip: list[str]) -> bool:
    low = name.lower()
    if only and not any(o.lower() in low for o in only):
        return False
    return not any(s.lower() in low for s in skip)


def transformed_main(pl: dict, filename: str):
    """Code object defining _mb_main(results=None): ray_perf.main, segmented.

    Each segment becomes::

        if __mb_enter__(i):
            try:
                <setup statements>
                if __mb_want__(i):
                    <the statement that produces the figures>
            except BaseException as _mb_exc:
                __mb_fail__(i, _mb_exc)
            finally:
                __mb_leave__(i)
    """
    main = pl["main"]
    new_body = []
    for i, seg in enumerate(pl["segments"]):
        stmts = seg["stmts"]
        first = stmts[0]
        tmpl = ast.parse(
            f"if __mb_enter__({i}):\n"
            "    try:\n"
            "        pass\n"
            "    except BaseException as _mb_exc:\n"
            f"        __mb_fail__({i}, _mb_exc)\n"
            "    finally:\n"
            f"        __mb_leave__({i})\n").body[0]
        want = ast.parse(f"if __mb_want__({i}):\n    pass\n").body[0]
        last = stmts[-1]
        for t, at in ((tmpl, first), (want, last)):
            for n in ast.walk(t):
                if hasattr(n, "lineno"):
                    n.lineno = n.end_lineno = at.lineno
                    n.col_offset = n.end_col_offset = 0
            for n in (t, *[x for x in t.body if isinstance(x, ast.Try)]):
                n.end_lineno = last.end_lineno
        if seg["figures"]:
            want.body = [last]
            tmpl.body[0].body = stmts[:-1] + [want]
        else:
            tmpl.body[0].body = list(stmts)
        new_body.append(tmpl)
    new_body.append(pl["ret"] or ast.parse("return results").body[0])
    extra = {"type_params": []} if "type_params" in ast.FunctionDef._fields else {}
    fn = ast.FunctionDef(name="_mb_main", args=main.args, body=new_body,
                         decorator_list=[], returns=None, type_comment=None, **extra)
    ast.copy_location(fn, main)
    mod = ast.Module(body=[fn], type_ignores=[])
    ast.fix_missing_locations(mod)
    return compile(mod, filename, "exec")


# ---------------------------------------------------------------------------
# Child: load ray_perf (real Ray or mpray under a shim) and run it
# ---------------------------------------------------------------------------


class FigureTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so that `except Exception` inside the
    library under test does not swallow it."""

    def __init__(self, msg, calls=None, in_call_s=None):
        super().__init__(msg)
        self.calls = calls
        self.in_call_s = in_call_s


class RestartChild(BaseException):
    """After a time-out the runtime under test may be wedged (a lock held, a
    reply never read), so the child stops and the parent starts a fresh one."""

    def __init__(self, seg, phase):
        super().__init__(f"restart after a time-out in segment {seg} ({phase})")
        self.seg = seg
        self.phase = phase


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
    sys.modules["ray"] = mpray
    for k, v in list(sys.modules.items()):
        if k.startswith("mpray."):
            sys.modules["ray" + k[len("mpray"):]] = v
    priv = types.ModuleType("ray._private")
    priv.__path__ = []  # a package with no files of its own
    priv.__package__ = "ray._private"
    sys.modules["ray._private"] = priv
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
    cname = "ray._private.ray_client_microbenchmark"
    try:
        if not os.path.exists(paths["client"]):
            raise ModuleNotFoundError(f"{paths['client']} not in the wheel")
        loader(cname, paths["client"])
        return {}
    except Exception as e:  # noqa: BLE001 - reported by the client figures
        text = f"{type(e).__name__}: {e}"
    stub = types.ModuleType(cname)

    def main(results=None, _text=text):
        raise ImportError(f"{cname} could not be imported: {_text}")

    stub.main = main
    sys.modules[cname] = stub
    return {"client_import_error": text}


def load_real_ray(paths: dict) -> dict:
    import ray

    notes = load_client_module(paths, lambda name, _path: importlib.import_module(name))
    perf = importlib.import_module("ray._private.ray_perf")
    if os.path.realpath(perf.__file__) != os.path.realpath(paths["perf"]):
        raise RuntimeError(f"ray_perf imported from {perf.__file__}, expected {paths['perf']}")
    return {"perf": perf, "version": ray.__version__, **notes}


class Runner:
    def __init__(self, pl, opts, emit):
        self.segs = pl["segments"]
        self.only = opts["only"]
        self.skip = opts["skip"]
        self.skip_figures = set(opts["skip_figures"])
        self.skip_segments = set(opts["skip_segments"])
        self.limit = opts["figure_timeout"]
        self.warmup_sleep = opts["warmup_sleep"]
        self.emit = emit
        self.reported = set(self.skip_figures)
        self.active = None  # figure inside timeit
        self.seg = None
        self.calls = 0
        self.call_t0 = None
        self.real_timeit = None

    # alarm -------------------------------------------------------------
    def arm(self):
        signal.setitimer(signal.ITIMER_REAL, self.limit)

    def disarm(self):
        signal.setitimer(signal.ITIMER_REAL, 0)

    def on_alarm(self, signum, frame):
        if self.active is not None:
            in_call = (time.perf_counter() - self.call_t0) if self.call_t0 is not None else None
            where = (f"{self.calls} call(s) of the timed function completed"
                     + (f"; the call in progress had run {in_call:.1f} s"
                        if in_call is not None else ""))
            raise FigureTimeout(f"no result within the figure limit of {self.limit:g} s "
                                f"(warm-up sleep {self.warmup_sleep:g} s included): {where}",
                                self.calls, in_call)
        raise FigureTimeout(f"setup (ray_perf code outside timeit) did not finish "
                            f"within {self.limit:g} s")

    # hooks called by the transformed main ------------------------------
    def want_fig(self, name):
        return selected(name, self.only, self.skip) and name not in self.skip_figures

    def enter(self, i):
        if i in self.skip_segments:
            self.emit(ev="seg_skipped", seg=i)
            return False
        self.seg = i
        self.emit(ev="seg_start", seg=i)
        self.arm()
        return True

    def want(self, i):
        return any(self.want_fig(f) for f in self.segs[i]["figures"])

    def leave(self, i):
        self.disarm()
        self.active = None
        self.seg = None

    def fail(self, i, exc):
        self.disarm()
        if isinstance(exc, KeyboardInterrupt):
            raise exc
        kind = "timeout" if isinstance(exc, FigureTimeout) else "error"
        text = f"{type(exc).__name__}: {exc}"
        tb = "".join(traceback.format_exception(exc))
        print(f"[segment {i}] {text}\n{tb}", file=sys.stderr, flush=True)
        remaining = [f for f in self.segs[i]["figures"]
                     if f not in self.reported and self.want_fig(f)]
        if self.active is not None:
            extra = {}
            if isinstance(exc, FigureTimeout) and exc.calls is not None:
                # a hang: no call finished, or the one in progress ran for most of the limit
                extra = {"calls": exc.calls, "in_call_s": exc.in_call_s,
                         "hang": exc.calls == 0 or (exc.in_call_s or 0) > self.limit / 2}
            self.emit(ev="error", fig=self.active, seg=i, kind=kind, phase="timed",
                      error=text, traceback=tb, **extra)
            self.reported.add(self.active)
            rest = [f for f in remaining if f != self.active]
            for f in rest:
                self.emit(ev="error", fig=f, seg=i, kind="not_run", phase="setup",
                          error=f"not run: {self.active!r} raised in the same ray_perf "
                                f"statement ({text})", traceback=tb)
                self.reported.add(f)
        else:
            for f in remaining:
                self.emit(ev="error", fig=f, seg=i, kind=kind, phase="setup",
                          error=text, traceback=tb)
                self.reported.add(f)
        if not remaining and self.active is None:
            self.emit(ev="seg_error", seg=i, kind=kind, error=text, traceback=tb)
        phase = "setup" if self.active is None else "timed"
        self.active = None
        if kind == "timeout":
            raise RestartChild(i, phase)

    def timeit(self, name, fn, multiplier=1, warmup_time_sec=None):
        if not self.want_fig(name):
            self.emit(ev="filtered", fig=name)
            return [None]
        self.active = name
        self.calls = 0
        self.call_t0 = None
        self.emit(ev="start", fig=name, seg=self.seg)
        runner = self

        def counted(*a, **k):
            runner.call_t0 = time.perf_counter()
            r = fn(*a, **k)
            runner.call_t0 = None
            runner.calls += 1
            return r

        t0 = time.perf_counter()
        self.arm()
        res = self.real_timeit(name, counted, multiplier,
                               warmup_time_sec=self.warmup_sleep
                               if warmup_time_sec is None else warmup_time_sec)
        elapsed = time.perf_counter() - t0
        self.arm()  # the next setup gets a fresh limit
        self.active = None
        self.reported.add(name)
        if not res or res[0] is None:  # filtered by TESTS_TO_RUN / TESTS_TO_SKIP
            self.emit(ev="filtered", fig=name)
            return res
        _n, mean, sd = res[0]
        self.emit(ev="result", fig=name, mean=float(mean), sd=float(sd),
                  calls=self.calls, elapsed=elapsed, multiplier=multiplier)
        return res


def child_main(side: str, opts: dict, events_path: str) -> int:
    out = open(events_path, "a", buffering=1)

    def emit(**rec):
        out.write(json.dumps(rec) + "\n")
        out.flush()

    try:
        paths = wheel_paths()
        pl = plan(paths)
        loaded = (install_mpray_shim(paths, opts["mpray_path"]) if side == "mpray"
                  else load_real_ray(paths))
    except BaseException as e:  # noqa: BLE001
        emit(ev="fatal", error=f"cannot load ray_perf for {side}: {type(e).__name__}: {e}",
             traceback=traceback.format_exc())
        return 2
    perf = loaded["perf"]
    emit(ev="meta", side=side, version=loaded["version"], pid=os.getpid(),
         perf=paths["perf"], dropped=pl["dropped"],
         **{k: v for k, v in loaded.items() if k not in ("perf", "version")})
    runner = Runner(pl, opts, emit)
    helpers = sys.modules["ray._private.ray_microbenchmark_helpers"]
    runner.real_timeit = helpers.timeit
    ns = perf.__dict__
    ns["timeit"] = runner.timeit
    client = sys.modules.get("ray._private.ray_client_microbenchmark")
    if client is not None and hasattr(client, "timeit"):
        client.timeit = runner.timeit
    ns.update(__mb_enter__=runner.enter, __mb_want__=runner.want,
              __mb_fail__=runner.fail, __mb_leave__=runner.leave)
    signal.signal(signal.SIGALRM, runner.on_alarm)
    exec(transformed_main(pl, paths["perf"]), ns)
    try:
        ns["_mb_main"]()
    except RestartChild as e:
        emit(ev="restart", seg=e.seg, phase=e.phase)
        # best effort: let the runtime clean up, but never wait on it for long
        signal.signal(signal.SIGALRM, lambda *_a: os._exit(4))
        signal.setitimer(signal.ITIMER_REAL, 20)
        try:
            perf.ray.shutdown()
        except BaseException:  # noqa: BLE001
            pass
        out.close()
        os._exit(4)
    except BaseException as e:  # noqa: BLE001 - outside every segment
        emit(ev="fatal", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        return 3
    finally:
        runner.disarm()
    emit(ev="done")
    out.close()
    return 0


# ---------------------------------------------------------------------------
# Parent: run each side in a subprocess, watch it, print the table
# ---------------------------------------------------------------------------


def _kill_tree(proc, kids):
    """Kill a hung child and every process it started, by PID."""
    import psutil

    try:
        kids = {k.pid: k for k in kids}
        for k in psutil.Process(proc.pid).children(recursive=True):
            kids[k.pid] = k
    except psutil.Error:
        pass
    try:
        proc.kill()
    except OSError:
        pass
    for k in kids.values():
        try:
            if k.is_running():  # same PID *and* create time as when seen
                k.kill()
        except psutil.Error:
            pass
    proc.wait()
    psutil.wait_procs(list(kids.values()), timeout=10)


def _reap_leftovers(kids, grace=15.0) -> list[str]:
    """After the child exited: processes it started that are still alive are
    given `grace` seconds, then killed (by PID) and reported."""
    import psutil

    alive = [k for k in kids if _running(k)]
    if not alive:
        return []
    _gone, alive = psutil.wait_procs(alive, timeout=grace)
    out = []
    for k in alive:
        try:
            desc = f"{k.pid} {' '.join(k.cmdline())[:80]}"
            k.kill()
            out.append(desc)
        except psutil.Error:
            pass
    return out


def _running(k) -> bool:
    import psutil

    try:
        return k.is_running() and k.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_side(side, args, figs, pl, progress) -> dict:
    """Run one side (with restarts after a hard hang); return figure cells."""
    import psutil

    cells: dict[str, dict] = {}
    res = {"attempts": [], "status": "ok", "version": None, "meta": {}}
    skip_segments: list[int] = []
    want = [f for f, _ in figs]
    seg_of = dict(figs)
    t_side = time.perf_counter()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        todo = [f for f in want if f not in cells]
        if not todo:
            break
        fd, path = tempfile.mkstemp(prefix=f"mpray-raybench-{side}-", suffix=".jsonl")
        os.close(fd)
        logf = tempfile.TemporaryFile(mode="w+")
        opts = {"only": args.only, "skip": args.skip, "warmup_sleep": args.warmup_sleep,
                "figure_timeout": args.figure_timeout, "mpray_path": args.mpray_path,
                "skip_figures": sorted(cells), "skip_segments": skip_segments}
        env = dict(os.environ)
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env["PYTHONPATH"] = args.mpray_path + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", side,
               "--_events", path, "--_opts", json.dumps(opts)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT)
        records, pos, last_ev = [], 0, time.perf_counter()
        kids: dict[int, psutil.Process] = {}
        killed = None
        idle_limit = args.figure_timeout + WATCHDOG_GRACE
        with open(path) as evf:
            while True:
                rc = proc.poll()
                evf.seek(pos)
                chunk = evf.read()
                lines = chunk.split("\n")
                pos += len(chunk) - len(lines[-1])
                for ln in lines[:-1]:
                    try:
                        rec = json.loads(ln)
                    except json.JSONDecodeError:
                        continue
                    records.append(rec)
                    last_ev = time.perf_counter()
                    progress(side, rec, cells, seg_of)
                if rc is not None:
                    break
                try:
                    for k in psutil.Process(proc.pid).children(recursive=True):
                        kids.setdefault(k.pid, k)
                except psutil.Error:
                    pass
                now = time.perf_counter()
                done = any(r.get("ev") == "done" for r in records)
                if now - last_ev > (120 if done else idle_limit):
                    killed = (f"no progress for {now - last_ev:.0f} s"
                              + (" after its last figure" if done else ""))
                elif now - t_side > args.timeout:
                    killed = f"the side's time limit of {args.timeout} s ran out"
                if killed:
                    _kill_tree(proc, kids.values())
                    break
                time.sleep(0.5)
        rc = proc.wait()
        logf.seek(0)
        log = logf.read()
        logf.close()
        os.unlink(path)
        leftovers = [] if killed else _reap_leftovers(list(kids.values()))
        att = {"attempt": attempt, "rc": rc, "elapsed_s": time.perf_counter() - t0,
               "killed": killed, "leftover_processes_killed": leftovers,
               "skip_segments": list(skip_segments), "log_tail": log[-6000:]}
        res["attempts"].append(att)
        for rec in records:
            ev = rec.get("ev")
            if ev == "meta":
                res["version"] = rec.get("version")
                res["meta"] = rec
            elif ev == "result" and rec["fig"] in seg_of:
                cells[rec["fig"]] = {"status": "ok", **{k: rec[k] for k in
                                     ("mean", "sd", "calls", "elapsed", "multiplier")}}
            elif ev == "error" and rec["fig"] in seg_of:
                cells[rec["fig"]] = {"status": rec["kind"], "phase": rec.get("phase"),
                                     "error": rec["error"], "traceback": rec.get("traceback"),
                                     **{k: rec[k] for k in ("calls", "in_call_s", "hang")
                                        if k in rec}}
            elif ev == "filtered" and rec["fig"] in seg_of:
                cells.setdefault(rec["fig"], {"status": "filtered",
                                              "error": "filtered by TESTS_TO_RUN/TESTS_TO_SKIP"})
            elif ev == "fatal":
                att["fatal"] = rec["error"]
                att["traceback"] = rec.get("traceback")
        if any(r.get("ev") == "done" for r in records):
            if killed:
                att["note"] = f"killed after finishing: {killed}"
            break
        restart = [r for r in records if r.get("ev") == "restart"]
        if restart and not killed:
            r = restart[-1]
            if r["phase"] == "setup":  # its setup hung: leave the whole segment out
                skip_segments.append(r["seg"])
            att["note"] = f"time-out in segment {r['seg']} ({r['phase']}): fresh process"
            if not any(f not in cells for f in want):
                break
            if attempt < MAX_ATTEMPTS:
                print(f"[{side}] time-out in segment {r['seg']} ({r['phase']}); restarting "
                      "in a fresh process, skipping what is done", file=sys.stderr, flush=True)
                continue
            res["status"] = "incomplete"
            break
        # The child died or was killed: find what it was doing.
        fatal = att.get("fatal")
        started = [r for r in records if r.get("ev") in ("start", "seg_start")]
        last = started[-1] if started else None
        tail = [ln for ln in log.strip().splitlines() if ln.strip()]
        why = (f"hard hang: child killed ({killed})" if killed else
               f"child process died (exit code {rc})"
               + (f": {fatal}" if fatal else f": {tail[-1][:300] if tail else '(no output)'}"))
        kind = "timeout" if killed else "error"
        if last is None:
            seg = None
            for f in want:
                cells.setdefault(f, {"status": kind, "error": why})
            res["status"] = "failed"
            break
        seg = last["seg"]
        if last.get("ev") == "start":
            # the timed part hung or crashed: on restart the segment's setup runs
            # again, and its figure (now in `cells`) is skipped
            culprit = last["fig"]
            if culprit in seg_of:
                cells[culprit] = {"status": kind, "phase": "timed", "error": why,
                                  "log_tail": log[-3000:]}
                progress(side, {"ev": "error", "fig": culprit, "kind": kind, "error": why},
                         cells, seg_of)
        else:
            culprit = f"segment {seg} setup"
            for f in pl["segments"][seg]["figures"]:
                if f in seg_of and f not in cells:
                    cells[f] = {"status": kind, "phase": "setup", "error": why}
                    progress(side, {"ev": "error", "fig": f, "kind": kind, "error": why},
                             cells, seg_of)
            skip_segments.append(seg)
        if not any(f not in cells for f in want):
            break
        if attempt < MAX_ATTEMPTS:
            print(f"[{side}] {culprit}: {why}; restarting in a fresh process",
                  file=sys.stderr, flush=True)
        else:
            res["status"] = "incomplete"
    for f in want:
        cells.setdefault(f, {"status": "not_run",
                             "error": "not run (the child gave up before reaching it)"})
    res["cells"] = cells
    res["elapsed_s"] = time.perf_counter() - t_side
    return res


def fmt_rate(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def cell_text(c: dict | None) -> str:
    if c is None:
        return "—"
    st = c["status"]
    if st == "ok":
        rel = c["sd"] / c["mean"] * 100 if c["mean"] else 0
        return f"{fmt_rate(c['mean'])} ±{rel:.0f}%"
    if st == "timeout":
        return "HANG" if c.get("hang", True) else "TOO SLOW"
    return {"error": "ERR", "not_run": "n/r", "filtered": "—"}.get(st, st)


def ratio_text(a: dict | None, b: dict | None) -> str:
    if not a or not b or a["status"] != "ok" or b["status"] != "ok" or not b["mean"]:
        return "—"
    r = a["mean"] / b["mean"]
    return f"{r:.3g}×"


def print_table(figs, sides, results, out=sys.stdout):
    head = ["figure (per second)"] + [f"{s} /s" for s in sides]
    if "ray" in sides and "mpray" in sides:
        head.append("mpray/ray")
    rows = []
    for f, _seg in figs:
        cs = {s: results[s]["cells"].get(f) for s in sides}
        row = [f] + [cell_text(cs[s]) for s in sides]
        if "ray" in sides and "mpray" in sides:
            row.append(ratio_text(cs["mpray"], cs["ray"]))
        rows.append(row)
    w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]

    def line(r):
        return "| " + " | ".join(x.ljust(w[0]) if i == 0 else x.rjust(w[i])
                                 for i, x in enumerate(r)) + " |"

    print(line(head), file=out)
    print("|" + "|".join("-" * (x + 2) if i == 0 else "-" * (x + 1) + ":"
                         for i, x in enumerate(w)) + "|", file=out)
    for r in rows:
        print(line(r), file=out)


def make_progress(total):
    counts = {}

    def progress(side, rec, cells, seg_of):
        ev = rec.get("ev")
        if ev == "meta":
            print(f"[{side}] {side} {rec.get('version')} pid {rec.get('pid')}"
                  + (f" ({rec['mpray_file']})" if rec.get("mpray_file") else "")
                  + (f"; client module: {rec['client_import_error']}"
                     if rec.get("client_import_error") else ""),
                  file=sys.stderr, flush=True)
        elif ev in ("result", "error") and rec.get("fig") in seg_of:
            counts[side] = counts.get(side, 0) + 1
            n = f"{counts[side]}/{total}"
            if ev == "result":
                msg = f"{fmt_rate(rec['mean'])} /s ±{rec['sd'] / rec['mean'] * 100:.0f}%" \
                    if rec["mean"] else "0 /s"
            else:
                msg = f"{rec['kind'].upper()}: {rec['error'][:200]}"
            print(f"[{side}] {n} {rec['fig']}: {msg}", file=sys.stderr, flush=True)
        elif ev == "fatal":
            print(f"[{side}] FATAL: {rec['error']}", file=sys.stderr, flush=True)

    return progress


def parent_main(args) -> int:
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    bad = [s for s in sides if s not in SIDES]
    if bad or not sides:
        sys.exit(f"--sides: choose from {', '.join(SIDES)}")
    paths = wheel_paths()
    pl = plan(paths)
    allfigs = figure_list(pl)
    figs = [(f, i) for f, i in allfigs if selected(f, args.only, args.skip)]
    if args.list:
        for f, i in allfigs:
            print(f"{i:3d}  {'*' if (f, i) in figs else ' '} {f}")
        return 0
    if not figs:
        sys.exit("no figure matches --only/--skip (see --list)")
    if args.figure_timeout is None:
        args.figure_timeout = args.warmup_sleep + TIMED_SECONDS + 150
    if args.figure_timeout < args.warmup_sleep + TIMED_SECONDS:
        print(f"# warning: --figure-timeout {args.figure_timeout:g} s is shorter than one "
              f"figure's sleep + measuring ({args.warmup_sleep + TIMED_SECONDS:g} s): "
              "every figure will time out", file=sys.stderr)
    print(f"# ray_perf: {paths['perf']}\n# {len(figs)} of {len(allfigs)} figures; "
          f"warm-up sleep {args.warmup_sleep:g} s per figure, figure limit "
          f"{args.figure_timeout:g} s; python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs", file=sys.stderr, flush=True)
    progress = make_progress(len(figs))
    results = {}
    for side in sides:
        print(f"# running {side} ...", file=sys.stderr, flush=True)
        results[side] = run_side(side, args, figs, pl, progress)
        r = results[side]
        print(f"# {side}: {r['status']} in {r['elapsed_s']:.0f} s"
              + (f" ({len(r['attempts'])} attempts)" if len(r["attempts"]) > 1 else ""),
              file=sys.stderr, flush=True)

    def ratio(f):
        if "ray" in sides and "mpray" in sides:
            m, r = results["mpray"]["cells"].get(f), results["ray"]["cells"].get(f)
            if ratio_text(m, r) != "—":
                return m["mean"] / r["mean"]
        return None

    doc = {
        "ray_perf": paths["perf"],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"python": platform.python_version(), "platform": platform.platform(),
                 "cpus": os.cpu_count()},
        "options": {"sides": sides, "only": args.only, "skip": args.skip,
                    "warmup_sleep": args.warmup_sleep, "figure_timeout": args.figure_timeout},
        "mpray_path": args.mpray_path,
        "mpray_commit": _git_commit() if os.path.realpath(args.mpray_path)
        == os.path.realpath(REPO_ROOT) else None,
        "left_out_of_main": pl["dropped"],
        "figures": [{"name": f, "segment": i, **{s: results[s]["cells"].get(f) for s in sides},
                     "ratio_mpray_ray": ratio(f)} for f, i in figs],
        "sides": {s: {k: v for k, v in results[s].items() if k != "cells"} for s in sides},
    }
    print()
    report(doc, args.verbose)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)
        print(f"\nwrote {args.json}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


def report(doc: dict, verbose: bool = False, out=sys.stdout) -> None:
    """Print the table and the notes from a result document (also --report)."""
    sides = doc["options"]["sides"]
    figs = [(f["name"], f["segment"]) for f in doc["figures"]]
    results = {s: {**doc["sides"][s], "cells": {f["name"]: f.get(s) for f in doc["figures"]}}
               for s in sides}
    vers = "; ".join(f"{s} {results[s].get('version')}" for s in sides)
    print(f"ray microbenchmark (ray/_private/ray_perf.py): {vers}; "
          f"{doc['host']['cpus']} CPUs; warm-up sleep {doc['options']['warmup_sleep']:g} s; "
          "mean ± sd of 4 rounds of 2 s", file=out)
    print(file=out)
    print_table(figs, sides, results, out=out)
    for s in sides:
        groups: dict[tuple, list[str]] = {}
        for f, _ in figs:
            c = results[s]["cells"].get(f) or {}
            if c.get("status") in ("ok", "filtered", None):
                continue
            tag = {"timeout": "HANG" if c.get("hang", True) else "TIME-OUT (slow, not hung)",
                   "error": "ERROR", "not_run": "NOT RUN"}.get(c["status"], c["status"])
            where = f" (in {c['phase']})" if c.get("phase") else ""
            key = (f"{tag}{where}: {c['error']}", c.get("traceback") or "")
            groups.setdefault(key, []).append(f)
        if groups:
            print(f"\nNot measured under {s}:", file=out)
            for (text, tb), names in groups.items():
                print(f"  {', '.join(repr(n) for n in names)}:\n    {text}", file=out)
                if verbose and tb:
                    print("      " + tb.rstrip().replace("\n", "\n      "), file=out)
        note = (results[s].get("meta") or {}).get("shim_note")
        if note:
            print(f"  note: {note}", file=out)
        for att in results[s].get("attempts", []):
            if att.get("killed") or att.get("fatal") or att.get("leftover_processes_killed"):
                print(f"  [{s} process {att['attempt']}] exit code {att['rc']}"
                      + (f"; killed: {att['killed']}" if att.get("killed") else "")
                      + (f"; fatal: {att['fatal']}" if att.get("fatal") else "")
                      + (f"; still running after the driver exited, killed: "
                         f"{att['leftover_processes_killed']}"
                         if att.get("leftover_processes_killed") else ""), file=out)
    if doc.get("left_out_of_main"):
        print(f"\nLeft out of ray_perf.main(): {'; '.join(doc['left_out_of_main'])}", file=out)


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mpray"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty(mpray/)" if dirty else "") if head else None
    except Exception:  # noqa: BLE001
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sides", default="ray,mpray", help="comma list of: ray,mpray")
    ap.add_argument("--only", action="append", default=[], metavar="SUBSTRING",
                    help="run only figures whose name contains SUBSTRING "
                         "(case-insensitive; repeatable: any match)")
    ap.add_argument("--skip", action="append", default=[], metavar="SUBSTRING",
                    help="leave out figures whose name contains SUBSTRING (repeatable)")
    ap.add_argument("--warmup-sleep", type=float, default=DEFAULT_WARMUP_SLEEP,
                    help="timeit's warmup_time_sec: idle seconds before each figure "
                         f"(Ray's default {DEFAULT_WARMUP_SLEEP})")
    ap.add_argument("--quick", action="store_true",
                    help="same as --warmup-sleep 0 (the measuring itself stays 1+4x2 s)")
    ap.add_argument("--figure-timeout", type=float, default=None,
                    help="seconds allowed for one figure (and for its setup); "
                         "default: warm-up sleep + 159")
    ap.add_argument("--timeout", type=float, default=5400,
                    help="seconds allowed for one side in all")
    ap.add_argument("--json", metavar="PATH", help="also write all results here")
    ap.add_argument("--mpray-path", default=REPO_ROOT, metavar="DIR",
                    help="directory holding the mpray package to measure "
                         "(default: this checkout)")
    ap.add_argument("--report", metavar="JSON",
                    help="print the table of an earlier --json file and exit")
    ap.add_argument("--list", action="store_true",
                    help="list ray_perf's figures and segments and exit")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="print tracebacks of the failed figures")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_events", help=argparse.SUPPRESS)
    ap.add_argument("--_opts", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        return child_main(args._child, json.loads(args._opts), args._events)
    if args.report:
        with open(args.report) as fh:
            report(json.load(fh), args.verbose)
        return 0
    if args.quick:
        args.warmup_sleep = 0
    args.mpray_path = os.path.abspath(args.mpray_path)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
