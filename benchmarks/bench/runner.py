"""The parent's side of one peer: start its worker subprocess, bound it in time,
read its records back, and turn them into table cells."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

from bench.measure import median
from bench.params import GROUP_KEYS, PEER_ENV
from bench.procs import kill_tree
from bench.revs import REPO_ROOT, python_path

COMPARE_PY = os.path.join(REPO_ROOT, "benchmarks", "compare.py")


def _worker_cmd(peer, args, results_path, mpray_root):
    cmd = [sys.executable, COMPARE_PY, "--_worker", peer,
           "--_results", results_path, "--repeat", str(args.repeat),
           "--figure-timeout", str(args.figure_timeout)]
    if mpray_root:
        cmd += ["--_mpray-root", mpray_root]
    if args.quick:
        cmd.append("--quick")
    if args.no_big:
        cmd.append("--no-big")
    if args.n:
        cmd += ["--n", str(args.n)]
    if args.wait_n:
        cmd += ["--wait-n", str(args.wait_n)]
    if args.only:
        cmd += ["--only", args.only]
    return cmd


def _wait(cmd, env, timeout, logf):
    """Run the worker; its exit code, or None when it ran past ``timeout``.

    Popen + wait(timeout) is what subprocess.run(timeout=) does, but on a
    timeout we also kill the worker's descendants (Ray's raylet/gcs, pool
    workers), by PID, rather than orphaning them."""
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        return None
    except KeyboardInterrupt:
        kill_tree(proc)
        raise


def _read_records(path):
    records = []
    with open(path) as fh:
        for line in fh:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    os.unlink(path)
    return records


def _set_status(res, rc, log, timeout):
    fatal = [r for r in res["records"] if "fatal" in r]
    if fatal:
        res.update(status="failed", error=fatal[0]["fatal"],
                   traceback=fatal[0].get("traceback"))
    elif rc is None:
        res.update(status="timeout",
                   error=f"worker timed out after {timeout} s "
                         "(killed; figures measured before are kept)")
    elif rc != 0 or not any(r.get("done") for r in res["records"]):
        last = [ln for ln in log.strip().splitlines() if ln.strip()]
        res.update(status="failed",
                   error=f"worker exited with code {rc}: "
                         f"{last[-1] if last else '(no output)'}")


def run_peer(peer, args, root):
    """Run one peer's worker subprocess with ``root`` first on PYTHONPATH
    (this checkout, or an ``mpray@REV`` tree); return its parsed records."""
    res = {"records": [], "status": "ok", "error": None}
    if peer == "ray" and importlib.util.find_spec("ray") is None:
        res.update(status="skipped", error="ray is not importable "
                   "(pip install ray); skipped")
        return res
    fd, path = tempfile.mkstemp(prefix=f"mpray-bench-{peer}-", suffix=".jsonl")
    os.close(fd)
    env = dict(os.environ)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["PYTHONPATH"] = python_path(root, env)
    env.update(PEER_ENV.get(peer, {}))
    is_mpray = peer.partition("@")[0].partition("-")[0] == "mpray"
    cmd = _worker_cmd(peer, args, path, root if is_mpray else None)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as logf:
        rc = _wait(cmd, env, args.timeout, logf)
        res["elapsed_s"] = time.perf_counter() - t0
        logf.seek(0)
        log = logf.read()
    res["records"] = _read_records(path)
    res["log_tail"] = log[-4000:]
    _set_status(res, rc, log, args.timeout)
    return res


def collect(peer_res, figs):
    """Turn a peer's records into {key: cell} with value/samples/skip/error."""
    cells = {}
    for r in peer_res["records"]:
        if "key" in r and "error" in r:
            cells[r["key"]] = {"error": r["error"],
                               "traceback": r.get("traceback")}
        elif "key" in r:
            s = r["samples"]
            val = s[-1] if s and isinstance(s[0], str) else median(s)
            cells[r["key"]] = {"value": val, "samples": s}
        elif "group" in r:
            for k in GROUP_KEYS.get(r["group"], [r["group"]]):
                if "skip" in r:
                    cells.setdefault(k, {"skip": r["skip"]})
                else:
                    cells.setdefault(k, {"error": r["error"],
                                         "traceback": r.get("traceback")})
    if peer_res["status"] != "ok":
        for f in figs:
            cells.setdefault(f["key"], {"error": peer_res["error"]})
    return cells
