"""What the parent prints and writes: the table, the notes, the JSON document."""

from __future__ import annotations

import json
import os
import platform
import sys
import time

from bench.params import GiB
from bench.revs import is_rev_peer


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer()
                              and abs(v) < 1e6):
        return f"{int(v):,}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def ratio(mine, other, better):
    if better is None:
        return None
    a, b = mine.get("value"), other.get("value")
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return None
    if a <= 0 or b <= 0:
        return None
    return a / b if better == "higher" else b / a


def cell_text(c):
    if c is None:
        return "—"
    if "value" in c:
        return fmt(c["value"])
    if "skip" in c:
        return "—"
    return "ERR"


def ratio_base(peers):
    """The peer the ratio columns are about: mpray, else the first mpray@REV."""
    return next((pe for pe in peers if pe == "mpray"),
                next((pe for pe in peers if is_rev_peer(pe)), None))


def ratio_columns(peers, base):
    """The peers that get a ``base/peer`` column: ray, pool, every other mpray@REV."""
    if base is None:
        return []
    return ([o for o in ("ray", "pool") if o in peers]
            + [pe for pe in peers if is_rev_peer(pe) and pe != base])


def _table_rows(figs, peers, cells, base, ratio_cols):
    rows = []
    for f in figs:
        if all(f["key"] not in cells[pe] for pe in peers):
            continue  # not measured at all (--only)
        row = [f["label"], f["unit"], f["better"] or ""]
        row += [cell_text(cells[pe].get(f["key"])) for pe in peers]
        for o in ratio_cols:
            r = ratio(cells[base].get(f["key"], {}),
                      cells[o].get(f["key"], {}), f["better"])
            row.append("—" if r is None else f"{r:.2f}x")
        rows.append(row)
    return rows


def print_table(figs, peers, cells, out=sys.stdout):
    base = ratio_base(peers)
    ratio_cols = ratio_columns(peers, base)
    head = ["figure", "unit", "better"] + list(peers) + [f"{base}/{o}"
                                                         for o in ratio_cols]
    rows = _table_rows(figs, peers, cells, base, ratio_cols)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]

    def line(r):
        cols = []
        for i, (x, w) in enumerate(zip(r, widths)):
            cols.append(str(x).ljust(w) if i < 3 else str(x).rjust(w))
        return "  ".join(cols).rstrip()

    print(line(head), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        print(line(r), file=out)
    if ratio_cols:
        print(f"\nRatio columns: >1 means {base} is better (rates: {base}/peer; "
              f"times and memory: peer/{base}).", file=out)
    if base == "mpray" and any(is_rev_peer(o) for o in ratio_cols):
        print("mpray is the working tree's, so in mpray/mpray@REV >1 means the "
              "working tree is better than REV.", file=out)


def print_notes(figs, peers, results, cells, verbose):
    """Errors (always); every sample and every skip reason with ``-v``."""
    notes = []
    for pe in peers:
        r = results[pe]
        if r["status"] != "ok":
            notes.append(f"{pe}: {r['status'].upper()}: {r['error']}")
        by_err = {}
        for k, c in cells[pe].items():
            if "error" in c and c["error"] != r.get("error"):
                by_err.setdefault(c["error"], []).append(k)
        for err, keys in by_err.items():
            notes.append(f"{pe}: {', '.join(keys)}: ERROR: {err}")
    skips = sorted({f"{pe}: {k}: {c['skip']}" for pe in peers
                    for k, c in cells[pe].items() if "skip" in c})
    if notes:
        print("\nErrors:")
        for n in notes:
            print("  " + n)
    if verbose:
        print("\nSamples (in measurement order):")
        for pe in peers:
            for f in figs:
                c = cells[pe].get(f["key"], {})
                if "samples" in c and len(c["samples"]) > 1:
                    print(f"  {pe}: {f['key']}: "
                          + ", ".join(fmt(x) for x in c["samples"]))
    if skips and verbose:
        print("\nSkipped:")
        for s in skips:
            print("  " + s)


def write_json(path, p, figs, peers, results, cells, meta, trees):
    import psutil

    def peer_doc(pe):
        r = results[pe]
        return {"status": r["status"],
                "error": r["error"],
                "traceback": r.get("traceback"),
                "elapsed_s": r.get("elapsed_s"),
                "version": meta.get(pe, {}).get("version"),
                "module_file": meta.get(pe, {}).get("module_file"),
                "commit": trees.commit(pe),
                "log_tail": r.get("log_tail") if r["status"] != "ok" else None,
                "figures": cells[pe]}

    doc = {
        "params": p,
        "host": {"python": platform.python_version(),
                 "platform": platform.platform(),
                 "cpus": os.cpu_count(),
                 "mem_total": psutil.virtual_memory().total},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "figures": figs,
        "peers": {pe: peer_doc(pe) for pe in peers},
    }
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1)
    print(f"\nwrote {path}")


def header(p):
    """The first line (on stderr): the parameters and the host."""
    import psutil

    return (f"# mpray comparison: repeat={p['repeat']} quick={p['quick']} "
            f"N={p['n']} wait_N={p['wait_n']} python={platform.python_version()} "
            f"cpus={os.cpu_count()} mem={psutil.virtual_memory().total / GiB:.0f}"
            f" GiB")
