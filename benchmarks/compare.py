#!/usr/bin/env python
"""Compare mpray with Ray, multiprocessing.Pool and ProcessPoolExecutor.

Usage::

    python benchmarks/compare.py [--peers mpray,pool,futures,ray,mpray@REV]
                                 [--repeat 5] [--quick] [--json out.json]

Every peer runs in a fresh subprocess (this same file, started with the
hidden ``--_worker PEER`` option), so peers never disturb each other.  Each
figure is measured ``--repeat`` times and the median is reported.  A peer
that fails (import error, crash, hang) gets a clear error line; the other
peers are still measured.  ``mpray@REV`` is mpray at git revision REV, from a
temporary git worktree (or ``--rev-dir``), measured beside the working tree's.

The Ray-API workloads (``mpray`` and ``ray``) are written once, against a
module object, so both run exactly the same code path.  ``pool`` and
``futures`` go through the same generic task figures via a thin adapter.
The code lives in the package ``benchmarks/bench/``; this file is the entry
point of the parent and of the workers.

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # (a script's folder is there already; an import's not)
    sys.path.insert(0, HERE)

from bench import report, revs  # noqa: E402
from bench.params import ALL_PEERS, figures, only_groups, params  # noqa: E402
from bench.runner import collect, run_peer  # noqa: E402
from bench.worker import GROUPS, worker_main  # noqa: E402


def _peers(spec):
    peers = [x.strip() for x in spec.split(",") if x.strip()]
    bad = [x for x in peers if x not in ALL_PEERS and not revs.is_rev_peer(x)]
    if bad:
        sys.exit(f"unknown peer(s): {', '.join(bad)}; choose from "
                 f"{', '.join(ALL_PEERS)}, mpray@REV")
    return peers


def _run_peers(peers, args, figs, trees):
    """Run every peer's worker in turn: (results, cells, meta) by peer."""
    results, cells, meta = {}, {}, {}
    for peer in peers:
        print(f"# running peer {peer} ...", file=sys.stderr, flush=True)
        r = run_peer(peer, args, trees.root(peer))
        results[peer] = r
        cells[peer] = collect(r, figs)
        for rec in r["records"]:
            if "meta" in rec:
                meta[peer] = rec["meta"]
        el = r.get("elapsed_s")
        where = meta.get(peer, {}).get("module_file")
        print(f"# peer {peer}: {r['status']}"
              + (f" in {el:.1f} s" if el is not None else "")
              + (f" — {r['error']}" if r["error"] else "")
              + (f" (mpray from {where})" if where and peer != "ray" else ""),
              file=sys.stderr, flush=True)
    return results, cells, meta


def _versions(peers, meta, trees):
    out = []
    for pe in peers:
        if pe in meta:
            commit = trees.commit(pe)
            out.append(f"{pe} {meta[pe]['version']}"
                       + (f" ({commit[:12]})" if commit else ""))
    return ", ".join(out)


def parent_main(args):
    peers = _peers(args.peers)
    p = params(args)
    figs = figures(p)
    trees = revs.Trees(peers, args.rev_dir)  # checks every REV and --rev-dir first
    print(report.header(p), file=sys.stderr)
    with trees:
        results, cells, meta = _run_peers(peers, args, figs, trees)
    print()
    print(f"Medians of {p['repeat']} repeats{' (quick)' if p['quick'] else ''}"
          f"; {_versions(peers, meta, trees)}; {os.cpu_count()} CPUs")
    print()
    report.print_table(figs, peers, cells)
    report.print_notes(figs, peers, results, cells, args.verbose)
    if args.json:
        report.write_json(args.json, p, figs, peers, results, cells, meta, trees)
    return 0 if all(results[pe]["status"] in ("ok", "skipped")
                    for pe in peers) else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default=",".join(ALL_PEERS),
                    help="comma list of: mpray,pool,futures,ray, and mpray@REV "
                         "(mpray at git revision REV, e.g. mpray@HEAD~3)")
    ap.add_argument("--rev-dir", action="append", metavar="[REV=]PATH",
                    help=revs.REV_DIR_HELP)
    ap.add_argument("--repeat", type=int, default=5,
                    help="measurements per figure; the median is reported")
    ap.add_argument("--quick", action="store_true",
                    help="N=2000, shorter loops, no 1 GiB figures")
    ap.add_argument("--json", metavar="PATH", help="also write results here")
    ap.add_argument("--n", type=int, default=0,
                    help="override N (tasks / puts per measurement)")
    ap.add_argument("--wait-n", type=int, default=0,
                    help="override the wait loop's N (default N/5)")
    ap.add_argument("--no-big", action="store_true",
                    help="skip the 1 GiB figures")
    ap.add_argument("--timeout", type=int, default=1200,
                    help="seconds allowed for one peer's subprocess")
    ap.add_argument("--figure-timeout", type=int, default=240,
                    help="seconds allowed for one figure group")
    ap.add_argument("--only", metavar="GROUPS",
                    help="run only these figure groups (comma list of: "
                         + ", ".join(GROUPS) + "; a figure key such as "
                         "put_small_rate stands for its group)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="also list skipped figures and why")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_results", help=argparse.SUPPRESS)
    ap.add_argument("--_mpray-root", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    bad = [g for g in only_groups(args.only) if g not in GROUPS]
    if bad:
        ap.error(f"unknown group(s) for --only: {', '.join(bad)}")
    if args._worker:
        return worker_main(args._worker, params(args), args._results,
                           args._mpray_root)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
