"""What the parent prints: progress lines (stderr), the table and the notes
under it (also for ``--report``)."""

from __future__ import annotations

import sys


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


def ratio_value(a: dict | None, b: dict | None) -> float | None:
    """a's rate / b's rate, when both were measured (and b's is not 0)."""
    if not a or not b or a["status"] != "ok" or b["status"] != "ok" or not b["mean"]:
        return None
    return a["mean"] / b["mean"]


def ratio_text(a: dict | None, b: dict | None) -> str:
    r = ratio_value(a, b)
    return "—" if r is None else f"{r:.3g}×"


def print_table(figs, sides, results, out=sys.stdout):
    both = "ray" in sides and "mpray" in sides
    head = ["figure (per second)"] + [f"{s} /s" for s in sides]
    if both:
        head.append("mpray/ray")
    rows = []
    for f, _seg in figs:
        cs = {s: results[s]["cells"].get(f) for s in sides}
        row = [f] + [cell_text(cs[s]) for s in sides]
        if both:
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


def _progress_text(rec: dict) -> str:
    if rec["ev"] == "result":
        return (f"{fmt_rate(rec['mean'])} /s ±{rec['sd'] / rec['mean'] * 100:.0f}%"
                if rec["mean"] else "0 /s")
    return f"{rec['kind'].upper()}: {rec['error'][:200]}"


def make_progress(total):
    """``progress(side, event, seg_of)``: one stderr line per event worth one."""
    counts = {}

    def progress(side, rec, seg_of):
        ev = rec.get("ev")
        if ev == "meta":
            print(f"[{side}] {side} {rec.get('version')} pid {rec.get('pid')}"
                  + (f" ({rec['mpray_file']})" if rec.get("mpray_file") else "")
                  + (f"; client module: {rec['client_import_error']}"
                     if rec.get("client_import_error") else ""),
                  file=sys.stderr, flush=True)
        elif ev in ("result", "error") and rec.get("fig") in seg_of:
            counts[side] = counts.get(side, 0) + 1
            print(f"[{side}] {counts[side]}/{total} {rec['fig']}: {_progress_text(rec)}",
                  file=sys.stderr, flush=True)
        elif ev == "fatal":
            print(f"[{side}] FATAL: {rec['error']}", file=sys.stderr, flush=True)

    return progress


def _not_measured(figs, cells: dict) -> dict[tuple, list[str]]:
    """{(text, traceback): figures} of the figures a side did not measure."""
    groups: dict[tuple, list[str]] = {}
    for f, _ in figs:
        c = cells.get(f) or {}
        if c.get("status") in ("ok", "filtered", None):
            continue
        tag = {"timeout": "HANG" if c.get("hang", True) else "TIME-OUT (slow, not hung)",
               "error": "ERROR", "not_run": "NOT RUN"}.get(c["status"], c["status"])
        where = f" (in {c['phase']})" if c.get("phase") else ""
        key = (f"{tag}{where}: {c['error']}", c.get("traceback") or "")
        groups.setdefault(key, []).append(f)
    return groups


def _attempt_line(s: str, att: dict) -> str | None:
    if not (att.get("killed") or att.get("fatal") or att.get("leftover_processes_killed")):
        return None
    return (f"  [{s} process {att['attempt']}] exit code {att['rc']}"
            + (f"; killed: {att['killed']}" if att.get("killed") else "")
            + (f"; fatal: {att['fatal']}" if att.get("fatal") else "")
            + (f"; still running after the driver exited, killed: "
               f"{att['leftover_processes_killed']}"
               if att.get("leftover_processes_killed") else ""))


def _print_side_notes(s: str, figs, result: dict, verbose: bool, out) -> None:
    groups = _not_measured(figs, result["cells"])
    if groups:
        print(f"\nNot measured under {s}:", file=out)
        for (text, tb), names in groups.items():
            print(f"  {', '.join(repr(n) for n in names)}:\n    {text}", file=out)
            if verbose and tb:
                print("      " + tb.rstrip().replace("\n", "\n      "), file=out)
    note = (result.get("meta") or {}).get("shim_note")
    if note:
        print(f"  note: {note}", file=out)
    for att in result.get("attempts", []):
        line = _attempt_line(s, att)
        if line:
            print(line, file=out)


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
        _print_side_notes(s, figs, results[s], verbose, out)
    if doc.get("left_out_of_main"):
        print(f"\nLeft out of ray_perf.main(): {'; '.join(doc['left_out_of_main'])}", file=out)
