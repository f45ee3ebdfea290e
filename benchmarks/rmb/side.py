"""The parent's side of one side (ray or mpray): start a child process, follow
its events, kill it and what it started when it hangs, turn the events into
figure cells, and start a fresh child after a time-out or a crash, skipping
what is done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from bench.procs import kill_tree, note_descendants, reap_leftovers
from bench.revs import REPO_ROOT, python_path

ENTRY = os.path.join(REPO_ROOT, "benchmarks", "ray_microbenchmark.py")
WATCHDOG_GRACE = 60  # seconds beyond the figure limit before the child is killed
DONE_GRACE = 120  # seconds a child may take to exit after its last figure
MAX_ATTEMPTS = 10  # child processes per side (a time-out or crash starts a fresh one)


def _read_new(evf, pos: int) -> tuple[list[dict], int]:
    """The complete JSON lines written to ``evf`` after ``pos``, and the new pos."""
    evf.seek(pos)
    chunk = evf.read()
    lines = chunk.split("\n")
    pos += len(chunk) - len(lines[-1])
    records = []
    for ln in lines[:-1]:
        try:
            records.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return records, pos


def _done(records) -> bool:
    return any(r.get("ev") == "done" for r in records)


class SideRun:
    """One side's run: ``SideRun(...).run()`` returns its result document."""

    def __init__(self, side, args, figs, pl, progress):
        self.side, self.args, self.pl, self.progress = side, args, pl, progress
        self.cells: dict[str, dict] = {}
        self.res = {"attempts": [], "status": "ok", "version": None, "meta": {}}
        self.skip_segments: list[int] = []
        self.want = [f for f, _ in figs]
        self.seg_of = dict(figs)
        self.t_side = time.perf_counter()

    def _all_done(self) -> bool:
        return all(f in self.cells for f in self.want)

    def run(self) -> dict:
        """Run child processes until every figure has a cell (with restarts
        after a time-out, a hard hang or a crash)."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if self._all_done():
                break
            att, records, log = self._attempt(attempt)
            again = self._after(att, records, log)
            if again is None:
                break
            if attempt < MAX_ATTEMPTS:
                print(f"[{self.side}] {again}", file=sys.stderr, flush=True)
            else:
                self.res["status"] = "incomplete"
        for f in self.want:
            self.cells.setdefault(f, {"status": "not_run",
                                      "error": "not run (the child gave up before reaching it)"})
        self.res["cells"] = self.cells
        self.res["elapsed_s"] = time.perf_counter() - self.t_side
        return self.res

    # one child process ---------------------------------------------------
    def _cmd(self, events_path: str) -> list[str]:
        a = self.args
        child = {"side": self.side, "events": events_path,
                 "opts": {"only": a.only, "skip": a.skip, "warmup_sleep": a.warmup_sleep,
                          "figure_timeout": a.figure_timeout, "mpray_path": a.mpray_path,
                          "skip_figures": sorted(self.cells),
                          "skip_segments": self.skip_segments}}
        return [sys.executable, ENTRY, "--_child", json.dumps(child)]

    def _env(self) -> dict:
        env = dict(os.environ)
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env["PYTHONPATH"] = python_path(self.args.mpray_path, env)
        return env

    def _attempt(self, attempt: int) -> tuple[dict, list[dict], str]:
        """Run one child to its end; its attempt record, events and output."""
        fd, path = tempfile.mkstemp(prefix=f"mpray-raybench-{self.side}-", suffix=".jsonl")
        os.close(fd)
        t0 = time.perf_counter()
        with tempfile.TemporaryFile(mode="w+") as logf:
            proc = subprocess.Popen(self._cmd(path), stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self._env(), cwd=REPO_ROOT)
            records, kids, killed = self._watch(proc, path)
            rc = proc.wait()
            logf.seek(0)
            log = logf.read()
        os.unlink(path)
        leftovers = [] if killed else reap_leftovers(list(kids.values()))
        att = {"attempt": attempt, "rc": rc, "elapsed_s": time.perf_counter() - t0,
               "killed": killed, "leftover_processes_killed": leftovers,
               "skip_segments": list(self.skip_segments), "log_tail": log[-6000:]}
        self.res["attempts"].append(att)
        self._fold(records, att)
        return att, records, log

    def _watch(self, proc, path: str):
        """Follow the child's events until it exits, or kill it (and every
        process it started, by PID) when it makes no progress or the side's
        time runs out.  Returns (events, processes seen, why it was killed)."""
        records, kids, killed = [], {}, None
        pos, last_ev = 0, time.perf_counter()
        with open(path) as evf:
            while True:
                rc = proc.poll()
                new, pos = _read_new(evf, pos)
                for rec in new:
                    records.append(rec)
                    last_ev = time.perf_counter()
                    self.progress(self.side, rec, self.seg_of)
                if rc is not None:
                    break
                note_descendants(proc.pid, kids)
                killed = self._overdue(records, last_ev)
                if killed:
                    kill_tree(proc, kids.values())
                    break
                time.sleep(0.5)
        return records, kids, killed

    def _overdue(self, records, last_ev: float) -> str | None:
        """Why the child should be killed now, or None."""
        now = time.perf_counter()
        done = _done(records)
        idle_limit = DONE_GRACE if done else self.args.figure_timeout + WATCHDOG_GRACE
        if now - last_ev > idle_limit:
            return (f"no progress for {now - last_ev:.0f} s"
                    + (" after its last figure" if done else ""))
        if now - self.t_side > self.args.timeout:
            return f"the side's time limit of {self.args.timeout} s ran out"
        return None

    def _fold(self, records, att: dict) -> None:
        """The child's events into the side's cells (and its meta, fatal error)."""
        seg_of = self.seg_of
        for rec in records:
            ev = rec.get("ev")
            if ev == "meta":
                self.res["version"] = rec.get("version")
                self.res["meta"] = rec
            elif ev == "result" and rec["fig"] in seg_of:
                self.cells[rec["fig"]] = {"status": "ok", **{k: rec[k] for k in (
                    "mean", "sd", "calls", "elapsed", "multiplier")}}
            elif ev == "error" and rec["fig"] in seg_of:
                self.cells[rec["fig"]] = {
                    "status": rec["kind"], "phase": rec.get("phase"),
                    "error": rec["error"], "traceback": rec.get("traceback"),
                    **{k: rec[k] for k in ("calls", "in_call_s", "hang") if k in rec}}
            elif ev == "filtered" and rec["fig"] in seg_of:
                self.cells.setdefault(rec["fig"], {
                    "status": "filtered", "error": "filtered by TESTS_TO_RUN/TESTS_TO_SKIP"})
            elif ev == "fatal":
                att["fatal"] = rec["error"]
                att["traceback"] = rec.get("traceback")

    # what next -------------------------------------------------------------
    def _after(self, att: dict, records, log: str) -> str | None:
        """After a child ended: None to stop, or why a fresh child runs next."""
        if _done(records):
            if att["killed"]:
                att["note"] = f"killed after finishing: {att['killed']}"
            return None
        restart = [r for r in records if r.get("ev") == "restart"]
        if restart and not att["killed"]:
            return self._after_restart(restart[-1], att)
        return self._after_death(att, records, log)

    def _after_restart(self, r: dict, att: dict) -> str | None:
        """The child stopped itself after a figure's time-out."""
        if r["phase"] == "setup":  # its setup hung: leave the whole segment out
            self.skip_segments.append(r["seg"])
        att["note"] = f"time-out in segment {r['seg']} ({r['phase']}): fresh process"
        if self._all_done():
            return None
        return (f"time-out in segment {r['seg']} ({r['phase']}); restarting "
                "in a fresh process, skipping what is done")

    def _after_death(self, att: dict, records, log: str) -> str | None:
        """The child died or was killed: find what it was doing."""
        killed, fatal = att["killed"], att.get("fatal")
        started = [r for r in records if r.get("ev") in ("start", "seg_start")]
        tail = [ln for ln in log.strip().splitlines() if ln.strip()]
        why = (f"hard hang: child killed ({killed})" if killed else
               f"child process died (exit code {att['rc']})"
               + (f": {fatal}" if fatal else f": {tail[-1][:300] if tail else '(no output)'}"))
        kind = "timeout" if killed else "error"
        if not started:
            for f in self.want:
                self.cells.setdefault(f, {"status": kind, "error": why})
            self.res["status"] = "failed"
            return None
        culprit = self._blame(started[-1], kind, why, log)
        if self._all_done():
            return None
        return f"{culprit}: {why}; restarting in a fresh process"

    def _blame(self, last: dict, kind: str, why: str, log: str) -> str:
        """Mark what the child was running when it died; name it."""
        if last.get("ev") == "start":
            # the timed part hung or crashed: on restart the segment's setup runs
            # again, and its figure (now in the cells) is skipped
            culprit = last["fig"]
            if culprit in self.seg_of:
                self.cells[culprit] = {"status": kind, "phase": "timed", "error": why,
                                       "log_tail": log[-3000:]}
                self.progress(self.side, {"ev": "error", "fig": culprit, "kind": kind,
                                          "error": why}, self.seg_of)
            return culprit
        seg = last["seg"]
        for f in self.pl["segments"][seg]["figures"]:
            if f in self.seg_of and f not in self.cells:
                self.cells[f] = {"status": kind, "phase": "setup", "error": why}
                self.progress(self.side, {"ev": "error", "fig": f, "kind": kind,
                                          "error": why}, self.seg_of)
        self.skip_segments.append(seg)
        return f"segment {seg} setup"


def run_side(side, args, figs, pl, progress) -> dict:
    """Run one side (with restarts after a hang or a crash); return its result."""
    return SideRun(side, args, figs, pl, progress).run()
