"""The parent process: plan the figures, run each side in turn, print the
table and write the JSON document."""

from __future__ import annotations

import json
import os
import platform
import sys
import time

from bench.revs import REPO_ROOT, describe_head
from rmb.report import make_progress, ratio_value, report
from rmb.segments import figure_list, plan, selected, wheel_paths
from rmb.side import run_side

SIDES = ("ray", "mpray")
DEFAULT_WARMUP_SLEEP = 10  # ray_microbenchmark_helpers.timeit's warmup_time_sec
TIMED_SECONDS = 9  # its 1 s warm-up + 4 rounds of 2 s
SETUP_ALLOWANCE = 150  # seconds of a figure's default limit beyond sleep + measuring


def _sides(spec: str) -> list[str]:
    sides = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in sides if s not in SIDES]
    if bad or not sides:
        sys.exit(f"--sides: choose from {', '.join(SIDES)}")
    return sides


def _figure_timeout(args) -> None:
    """Default ``--figure-timeout``, and a warning when it cannot be met."""
    if args.figure_timeout is None:
        args.figure_timeout = args.warmup_sleep + TIMED_SECONDS + SETUP_ALLOWANCE
    if args.figure_timeout < args.warmup_sleep + TIMED_SECONDS:
        print(f"# warning: --figure-timeout {args.figure_timeout:g} s is shorter than one "
              f"figure's sleep + measuring ({args.warmup_sleep + TIMED_SECONDS:g} s): "
              "every figure will time out", file=sys.stderr)


def _run_sides(sides, args, figs, pl) -> dict:
    progress = make_progress(len(figs))
    results = {}
    for side in sides:
        print(f"# running {side} ...", file=sys.stderr, flush=True)
        results[side] = r = run_side(side, args, figs, pl, progress)
        print(f"# {side}: {r['status']} in {r['elapsed_s']:.0f} s"
              + (f" ({len(r['attempts'])} attempts)" if len(r["attempts"]) > 1 else ""),
              file=sys.stderr, flush=True)
    return results


def build_doc(args, sides, paths, pl, figs, results) -> dict:
    """The JSON document (what ``--json`` writes and ``--report`` reads)."""
    both = "ray" in sides and "mpray" in sides

    def ratio(f):
        if both:
            return ratio_value(results["mpray"]["cells"].get(f), results["ray"]["cells"].get(f))
        return None

    return {
        "ray_perf": paths["perf"],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"python": platform.python_version(), "platform": platform.platform(),
                 "cpus": os.cpu_count()},
        "options": {"sides": sides, "only": args.only, "skip": args.skip,
                    "warmup_sleep": args.warmup_sleep, "figure_timeout": args.figure_timeout},
        "mpray_path": args.mpray_path,
        "mpray_commit": describe_head() if os.path.realpath(args.mpray_path)
        == os.path.realpath(REPO_ROOT) else None,
        "left_out_of_main": pl["dropped"],
        "figures": [{"name": f, "segment": i, **{s: results[s]["cells"].get(f) for s in sides},
                     "ratio_mpray_ray": ratio(f)} for f, i in figs],
        "sides": {s: {k: v for k, v in results[s].items() if k != "cells"} for s in sides},
    }


def parent_main(args) -> int:
    sides = _sides(args.sides)
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
    _figure_timeout(args)
    print(f"# ray_perf: {paths['perf']}\n# {len(figs)} of {len(allfigs)} figures; "
          f"warm-up sleep {args.warmup_sleep:g} s per figure, figure limit "
          f"{args.figure_timeout:g} s; python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs", file=sys.stderr, flush=True)
    results = _run_sides(sides, args, figs, pl)
    doc = build_doc(args, sides, paths, pl, figs, results)
    print()
    report(doc, args.verbose)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)
        print(f"\nwrote {args.json}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1
