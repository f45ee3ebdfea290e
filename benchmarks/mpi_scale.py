#!/usr/bin/env python
"""What ranks cost as a job grows: init time, shutdown time and idle memory per rank.

    python benchmarks/mpi_scale.py                       # 4, 16 and 64 ranks
    python benchmarks/mpi_scale.py --ranks 4,16 --idle 5 --json out.json
    python benchmarks/mpi_scale.py --variant "store off:MPRAY_CONTROL_STORE=0"
    python benchmarks/mpi_scale.py --variant "before:PYTHONPATH=/tmp/old-tree"

For each N, one ``mpiexec -n N`` of this file (``--_rank``) in which every rank imports
mpray and calls ``ray.init()``, then rank 0 idles while this process looks at the job
from outside, and then calls ``ray.shutdown()``.  Figures:

* **init**: from the launch (just before ``mpiexec`` starts) to rank 0's ``init()``
  returning.  ``init()`` ends with collectives over every rank (allgathers, window
  creation), so when it returns on rank 0 every rank has passed them; the others only
  go on into their agent loops.  Beside it: the slowest rank's import of mpray (each rank
  records when it got to ``init()``), rank 0's ``init()`` call alone, and the CPU seconds
  a rank's processes had used by the first sample (init's work, which ranks sharing
  cores wait for one another to get: init there is about ranks x this / cores).
* **idle memory**: after ``--idle`` seconds with nothing to do, the PSS (proportional set
  size: shared pages split among the processes that map them, so sums are real memory)
  of every process of every rank, read from /proc by this process: the rank's MPI
  process, its node, the node's idle workers and its control-store writer.  Per rank:
  the mean over ranks; the launcher's processes apart.  Also the CPU the idle job burns
  (% of one core per rank, over the last ``--idle`` seconds: the agents' polling).
* **fan-out**: then a no-op pinned to each rank, all gathered: first (new function,
  idle ranks), at once again (hot), and after the agents are back at their longest
  polling pause (idle).
* **shutdown**: from rank 0 calling ``shutdown()`` (which stops every rank) to the
  launcher's exit, and ``shutdown()`` alone.

``--variant LABEL:VAR=VAL,VAR=VAL`` (repeatable) runs each N again with those
environment variables (``PYTHONPATH=/another/tree`` measures another checkout), right
after the plain run, so that before/after figures come from one run of the machine.
Every ``mpiexec`` is bounded by ``--timeout`` (its process group is killed past it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(HERE))
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


# ---------------------------------------------------------------- inside the job
def rank_main(out_dir: str, limit: float) -> None:
    """Every rank: import, record when, init().  Rank 0 then idles until told to shut
    down (a file ``go`` appears in ``out_dir``), and records its timings."""
    import psutil

    import mpray as ray
    from mpray_mpi.launch import detect

    imported = time.time()
    rank = detect().rank
    _write(out_dir, f"r{rank}", {"rank": rank, "pid": os.getpid(), "imported": imported,
                                 "created": psutil.Process().create_time()})
    t0 = time.time()
    ray.init()  # (ranks > 0 serve in here and exit at rank 0's shutdown)
    t1 = time.time()
    _write(out_dir, "ready", {"init_call": t1 - t0, "init_end": t1, "mpray": ray.__file__,
                              "cpus": ray.cluster_resources().get("CPU", 0)})
    deadline = time.monotonic() + limit
    go = os.path.join(out_dir, "go")
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    _write(out_dir, "fanout", fan_out(ray))
    time.sleep(IDLE_AGAIN_S)  # (shutdown, as fan-outs, from idle ranks)
    t2 = time.time()
    ray.shutdown()
    _write(out_dir, "shut", {"shutdown_start": t2, "shutdown_call": time.time() - t2})


IDLE_AGAIN_S = 2.5  # past the agents' second of hot polling: they pause 4 ms again


def fan_out(ray) -> dict:
    """Seconds to run a no-op pinned to each rank and get every result: ``first`` (the
    function new to every rank, the ranks idle since init), ``hot`` (at once again) and
    ``idle`` (again after IDLE_AGAIN_S: every agent back at its longest pause)."""
    from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

    pinned = [Affinity(n["NodeID"], soft=False) for n in ray.nodes()]

    @ray.remote
    def noop():
        return None

    def once() -> float:
        t = time.perf_counter()
        ray.get([noop.options(scheduling_strategy=p).remote() for p in pinned], timeout=600)
        return time.perf_counter() - t

    out = {"first": once(), "hot": once()}
    time.sleep(IDLE_AGAIN_S)
    out["idle"] = once()
    return out


def _write(out_dir: str, name: str, rec: dict) -> None:
    tmp = os.path.join(out_dir, f".{name}.tmp")
    with open(tmp, "w") as f:
        json.dump(rec, f)
    os.replace(tmp, os.path.join(out_dir, name))  # (whole, or not there yet)


def _read(out_dir: str, name: str) -> dict | None:
    try:
        with open(os.path.join(out_dir, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- the job from outside
def rank_of(p) -> str | None:
    """The launcher's rank variable of a process (its descendants inherit it)."""
    try:
        env = p.environ()
    except Exception:  # noqa: BLE001 - gone, or not readable
        return None
    return next((env[v] for v in RANK_VARS if v in env), None)


def classify(tree: list) -> dict[int, dict[str, list]]:
    """``{rank: {role: [process]}}`` of a launcher's process tree, by depth within a
    rank: the rank's MPI process (whose parent is of no rank), its node (forked by it),
    and the node's children: its writer (SCHED_IDLE, or nice 19 where refused) and its
    workers."""
    rank = {p.pid: rank_of(p) for p in tree}
    parent = {}
    for p in tree:
        try:
            parent[p.pid] = p.ppid()
        except Exception:  # noqa: BLE001 - ended meanwhile
            pass

    def depth(pid: int) -> int:
        up = parent.get(pid)
        return 0 if up is None or rank.get(up) != rank[pid] else 1 + depth(up)

    out: dict[int, dict[str, list]] = {}
    for p in tree:
        if rank[p.pid] is None or p.pid not in parent:
            continue
        d = depth(p.pid)
        role = ("rank", "node")[d] if d < 2 else "other"
        if d == 2:
            role = "writer" if _is_idle_class(p) else "worker"
        out.setdefault(int(rank[p.pid]), {}).setdefault(role, []).append(p)
    return out


def _is_idle_class(p) -> bool:
    try:
        return os.sched_getscheduler(p.pid) == os.SCHED_IDLE or p.nice() >= 19
    except Exception:  # noqa: BLE001
        return False


def sample(launcher_pid: int) -> dict:
    """PSS/USS and CPU seconds of every process of the job, now."""
    import psutil

    root = psutil.Process(launcher_pid)
    tree = [root, *root.children(recursive=True)]
    by_rank = classify(tree)
    in_ranks = {p.pid for roles in by_rank.values() for ps in roles.values() for p in ps}
    out = {"ranks": {}, "launcher": {"pss": 0, "uss": 0, "procs": 0}}
    for r, roles in by_rank.items():
        out["ranks"][r] = {role: [_mem(p) for p in ps] for role, ps in roles.items()}
    for p in tree:
        if p.pid not in in_ranks:
            m = _mem(p)
            for k in ("pss", "uss"):
                out["launcher"][k] += m[k]
            out["launcher"]["procs"] += 1
    return out


def _mem(p) -> dict:
    try:
        m = p.memory_full_info()
        t = p.cpu_times()
        return {"pid": p.pid, "pss": m.pss, "uss": m.uss, "cpu": t.user + t.system}
    except Exception:  # noqa: BLE001 - ended meanwhile
        return {"pid": p.pid, "pss": 0, "uss": 0, "cpu": 0.0}


# ---------------------------------------------------------------- one run
def run_one(n: int, label: str, extra: dict, a) -> dict:
    """One ``mpiexec -n n`` measured; its record (``error`` set if it failed)."""
    out_dir = tempfile.mkdtemp(prefix="mpray-scale-")
    env = dict(os.environ, MPRAY_TMPDIR=os.path.join(out_dir, "tmp"), MPRAY_LOG_DIR="",
               PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (extra.get("PYTHONPATH"), REPO,
                                                    os.environ.get("PYTHONPATH")) if x)
    cmd = [a.mpiexec, "-n", str(n), sys.executable, HERE, "--_rank", out_dir,
           "--_limit", str(a.timeout)]
    log = open(os.path.join(out_dir, "log"), "w+")
    rec = {"label": label, "ranks": n, "env": extra}
    launched = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=REPO)
    deadline = time.monotonic() + a.timeout
    try:
        if not _wait(lambda: _read(out_dir, "ready") or proc.poll() is not None, deadline):
            raise RuntimeError(f"no init() return within {a.timeout} s")
        ready = _read(out_dir, "ready")
        if ready is None:
            raise RuntimeError(f"the job ended before init() returned (rc {proc.poll()})")
        time.sleep(a.settle)
        first = (time.monotonic(), sample(proc.pid))
        time.sleep(a.idle)
        last = (time.monotonic(), sample(proc.pid))
        open(os.path.join(out_dir, "go"), "w").close()
        rc = proc.wait(max(1.0, deadline - time.monotonic()))
        ended = time.time()
        rec.update(_figures(out_dir, n, launched, ready, first, last, ended), rc=rc)
        if rc:
            rec["error"] = f"exit status {rc}"
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        rec["error"] = str(e)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # (the launcher's group: every rank)
            proc.wait()
        log.seek(0)
        if "error" in rec:
            rec["log_tail"] = log.read()[-3000:]
        log.close()
        shutil.rmtree(out_dir, ignore_errors=True)
    return rec


def _wait(cond, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _figures(out_dir: str, n: int, launched: float, ready: dict, first, last,
             ended: float) -> dict:
    shut = _read(out_dir, "shut") or {}
    fan = _read(out_dir, "fanout") or {}
    starts = [r for r in (_read(out_dir, f"r{k}") for k in range(n)) if r]
    rec = {
        "init_s": ready["init_end"] - launched,
        "init_call_s": ready["init_call"],
        "slowest_import_s": max(r["imported"] for r in starts) - launched,
        "cpus": ready["cpus"], "mpray": ready["mpray"],
        "shutdown_s": ended - shut["shutdown_start"] if shut else None,
        "shutdown_call_s": shut.get("shutdown_call"),
        "fanout_first_s": fan.get("first"), "fanout_hot_s": fan.get("hot"),
        "fanout_idle_s": fan.get("idle"),
    }
    rec.update(_memory(n, first, last))
    return rec


def _memory(n: int, first, last) -> dict:
    """Per-rank means from the last sample; idle CPU from the two."""
    (t0, s0), (t1, s1) = first, last
    MiB = 1 << 20
    roles = ("rank", "node", "worker", "writer", "other")
    per = {role: [] for role in roles}
    per_uss = {role: [] for role in roles}
    per_cpu = {role: [] for role in roles}
    totals, procs, cpu = [], [], []
    cpu0 = {m["pid"]: m["cpu"] for rs in s0["ranks"].values() for ms in rs.values()
            for m in ms}
    for r, rs in sorted(s1["ranks"].items()):
        ms = [m for role in rs.values() for m in role]
        totals.append(sum(m["pss"] for m in ms) / MiB)
        procs.append(len(ms))
        cpu.append(sum(m["cpu"] - cpu0.get(m["pid"], m["cpu"]) for m in ms) / (t1 - t0))
        for role in roles:
            per[role].append(sum(m["pss"] for m in rs.get(role, ())) / MiB)
            per_uss[role].append(sum(m["uss"] for m in rs.get(role, ())) / MiB)
            per_cpu[role].append(sum(m["cpu"] - cpu0.get(m["pid"], m["cpu"])
                                     for m in rs.get(role, ())) / (t1 - t0))
    # CPU seconds by the first sample: init's work, and ``settle`` seconds of idling
    init_cpu = {role: [sum(m["cpu"] for m in rs.get(role, ())) for rs in s0["ranks"].values()]
                for role in roles}
    k = len(totals)
    mean = (lambda xs: sum(xs) / len(xs)) if k else (lambda xs: 0.0)
    return {
        "ranks_seen": k, "procs_per_rank": mean(procs),
        "pss_rank_mib": mean(totals), "pss_rank0_mib": totals[0] if k else 0.0,
        "pss_others_mib": mean(totals[1:]) if k > 1 else 0.0,
        "pss_by_role_mib": {role: mean(v) for role, v in per.items()},
        # (what a process's end would give back: its own pages, not its share of others)
        "uss_by_role_mib": {role: mean(v) for role, v in per_uss.items()},
        "pss_total_mib": sum(totals) + s1["launcher"]["pss"] / MiB,
        "launcher_pss_mib": s1["launcher"]["pss"] / MiB,
        "idle_cpu_pct_rank": 100 * mean(cpu),
        "idle_cpu_pct_total": 100 * sum(cpu),
        "idle_cpu_pct_by_role": {role: 100 * mean(v) for role, v in per_cpu.items()},
        "init_cpu_s_rank": sum(mean(v) for v in init_cpu.values() if v),
        "init_cpu_s_by_role": {role: mean(v) if v else 0.0 for role, v in init_cpu.items()},
    }


# ---------------------------------------------------------------- the table
COLUMNS = [  # (heading, key, format)
    ("ranks", "ranks", "{}"), ("init s", "init_s", "{:.1f}"),
    ("last import s", "slowest_import_s", "{:.1f}"), ("init() s", "init_call_s", "{:.2f}"),
    ("shutdown s", "shutdown_s", "{:.2f}"), ("shutdown() s", "shutdown_call_s", "{:.2f}"),
    ("fan-out first/hot/idle s", "fanout", "{}"), ("procs/rank", "procs_per_rank", "{:.1f}"), ("PSS/rank MiB", "pss_rank_mib", "{:.1f}"),
    ("rank 0 MiB", "pss_rank0_mib", "{:.1f}"), ("rank k MiB", "pss_others_mib", "{:.1f}"),
    ("total MiB", "pss_total_mib", "{:.0f}"), ("init CPU s/rank", "init_cpu_s_rank", "{:.2f}"), ("idle CPU %/rank", "idle_cpu_pct_rank",
                                                "{:.2f}"),
]


def print_table(res: list[dict]) -> None:
    rows = [[h for h, _k, _f in COLUMNS] + ["rank, node, workers, writer MiB"]]
    for r in res:
        if "error" in r:
            rows.append([str(r["ranks"]), f"{r['label']}: {r['error']}"])
            continue
        role = r["pss_by_role_mib"]
        r = dict(r, fanout="/".join(f"{r.get(f'fanout_{k}_s') or 0:.3f}"
                                     for k in ("first", "hot", "idle")))
        rows.append([f.format(r[k]) if r.get(k) is not None else "-" for _h, k, f in COLUMNS]
                    + [", ".join(f"{role[x]:.1f}" for x in ("rank", "node", "worker",
                                                            "writer"))])
    labels = list(dict.fromkeys(r["label"] for r in res))
    for label in labels:
        print(f"\n{label}:")
        part = [rows[0]] + [row for row, r in zip(rows[1:], res) if r["label"] == label]
        widths = [max(len(row[i]) for row in part if i < len(row))
                  for i in range(len(part[0]))]
        for row in part:
            print(" | ".join(c.rjust(w) for c, w in zip(row, widths)))


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="4,16,64", help="rank counts (comma list)")
    ap.add_argument("--idle", type=float, default=3.0,
                    help="seconds idle between the two samples (idle CPU is over these)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds after init() returns before the first sample")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mpiexec")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--variant", action="append", default=[],
                    help="LABEL:VAR=VAL,VAR=VAL: each N again with these variables")
    ap.add_argument("--mpiexec", default="mpiexec")
    ap.add_argument("--json", help="write the records here")
    ap.add_argument("--_rank", help=argparse.SUPPRESS)
    ap.add_argument("--_limit", type=float, default=300, help=argparse.SUPPRESS)
    return ap.parse_args()


def _variants(specs: list[str]) -> list[tuple[str, dict]]:
    out = [("this tree", {})]
    for spec in specs:
        label, _, pairs = spec.partition(":")
        env = dict(p.split("=", 1) for p in pairs.split(",") if p.strip())
        out.append((label or pairs, env))
    return out


def main() -> int:
    a = _args()
    if a._rank:
        rank_main(a._rank, a._limit)
        return 0
    res = []
    for n in [int(x) for x in a.ranks.split(",") if x.strip()]:
        for _ in range(a.repeat):
            for label, env in _variants(a.variant):  # (back to back: one state of the machine)
                rec = run_one(n, label, env, a)
                print(f"# {label}, {n} ranks: " + (rec.get("error") or
                      f"init {rec['init_s']:.1f} s, {rec['pss_rank_mib']:.1f} MiB/rank, "
                      f"shutdown {rec['shutdown_s']:.2f} s"), file=sys.stderr, flush=True)
                if "error" in rec:
                    print(rec["log_tail"], file=sys.stderr)
                res.append(rec)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    print(f"\n{os.cpu_count()} CPUs; init: launch to rank 0's init() return; PSS after "
          f"{a.settle + a.idle:.0f} s idle; shutdown: rank 0's shutdown() to the "
          "launcher's exit")
    print_table(res)
    return 1 if any("error" in r for r in res) else 0


if __name__ == "__main__":
    sys.exit(main())
