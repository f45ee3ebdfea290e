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

The code lives in the package ``benchmarks/rmb/`` (one module per concern; see
its ``__init__``); this file is the entry point of the parent and of the
children (the hidden ``--_child`` option).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # (a script's folder is there already; an import's not)
    sys.path.insert(0, HERE)

from bench.revs import REPO_ROOT  # noqa: E402
from rmb.parent import DEFAULT_WARMUP_SLEEP, parent_main  # noqa: E402
from rmb.report import report  # noqa: E402


def _parser() -> argparse.ArgumentParser:
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
    # the child of one side: {"side", "events" (a file for JSON lines), "opts"}
    ap.add_argument("--_child", metavar="JSON", help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args._child:
        from rmb.child import child_main

        child = json.loads(args._child)
        return child_main(child["side"], child["opts"], child["events"])
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
