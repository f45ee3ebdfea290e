"""``mpray report``: one self-contained HTML file about a session, for after the job.

Data flow::

    Reader(session) ─ tasks, workers, usage, objects, actors ─▶ numpy columns
        ─▶ Bokeh figures: the task timeline by worker, tasks per function (by state),
           durations per function (quantiles), worker utilisation over time and per
           worker, object-store use (and spilled bytes) over time, failures (a table)
        ─▶ bokeh.embed.file_html(INLINE resources: no network needed to view it)
           plus a small script that marks the page rendered (or its errors) in the DOM
        ─▶ report.html

Bokeh (the ``report`` extra) is imported only here: nothing else in mpray needs it.  A
session of millions of tasks keeps the file small: the timeline draws the longest
``MAX_BARS`` executions (and says so); counts, quantiles and curves use every task.
"""

from __future__ import annotations

import html
import os
import time

import numpy as np

from .reader import _hex

MAX_BARS = 20_000  # task bars drawn in the timeline (the longest ones beyond that)
MAX_FAILURES = 500  # rows of the failures table
SAMPLES = 400  # points of the curves over time
WIDTH = 1100
_STATE_COLOURS = {"FINISHED": "#4c9a2a", "FAILED": "#c0392b", "RUNNING": "#f39c12",
                  "PENDING": "#95a5a6"}
# what the page says in the DOM once Bokeh drew every plot, or the errors it hit: the
# test suite (and anyone curious) reads it with a headless browser's --dump-dom
_MARKER_JS = """
<script>
(function () {
  var errors = [];
  function note(text) { errors.push(String(text)); show(); }
  window.addEventListener("error", function (e) { note(e.message || e); });
  window.addEventListener("unhandledrejection", function (e) { note(e.reason); });
  function show() {
    var el = document.getElementById("mpray-report-status");
    if (!el) { el = document.createElement("pre"); el.id = "mpray-report-status";
               el.style.display = "none"; document.body.appendChild(el); }
    var views = 0;
    try { if (window.Bokeh && Bokeh.index) { views = Object.keys(Bokeh.index).length; } }
    catch (e) { errors.push(String(e)); }
    el.setAttribute("data-views", views);
    el.setAttribute("data-errors", errors.length);
    el.textContent = errors.join("\\n");
  }
  var tries = 0;
  var timer = setInterval(function () {
    show(); tries += 1;
    var el = document.getElementById("mpray-report-status");
    if (el.getAttribute("data-views") !== "0" || tries > 100) { clearInterval(timer); }
  }, 50);
})();
</script>
"""


def _bokeh():
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        raise RuntimeError("mpray report draws with Bokeh: pip install 'mpray[report]' "
                           "(or pip install bokeh)") from None


# ----------------------------------------------------------------------------- data
def _tasks(reader) -> dict:
    """The tasks' columns: name, state, rank, worker, start/end (s since t0), error."""
    rows = reader.task_rows()
    cols = {k: [r[k] for r in rows] for k in ("task_id", "name", "state", "rank",
                                              "worker_pid", "started", "finished",
                                              "submitted", "error_type", "error_message")}
    f = np.array([np.nan if v is None else v for v in cols["started"]], dtype=float)
    e = np.array([np.nan if v is None else v for v in cols["finished"]], dtype=float)
    cols["start"], cols["end"] = f, e
    return cols


def _origin(reader, tasks: dict) -> float:
    """The session's start (wall seconds): its first node's, else its first task's."""
    starts = [n["start_time_ms"] / 1000 for n in reader.nodes() if n["start_time_ms"]]
    if starts:
        return min(starts)
    ok = tasks["start"][~np.isnan(tasks["start"])]
    return float(ok.min()) if ok.size else time.time()


def _running_at(starts: np.ndarray, ends: np.ndarray, at: np.ndarray) -> np.ndarray:
    """How many of the intervals [start, end) contain each time in ``at``."""
    s, e = np.sort(starts), np.sort(ends)
    return np.searchsorted(s, at, side="right") - np.searchsorted(e, at, side="right")


# ----------------------------------------------------------------------------- figures
def _timeline(t: dict, t0: float, now: float):
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.palettes import Category10, Category20
    from bokeh.plotting import figure

    ran = np.flatnonzero(~np.isnan(t["start"]) & np.array(
        [p is not None for p in t["worker_pid"]], dtype=bool))
    end = np.where(np.isnan(t["end"]), now, t["end"])
    shown = ran
    if ran.size > MAX_BARS:  # the longest executions: where the time went
        dur = end[ran] - t["start"][ran]
        shown = ran[np.argsort(dur)[-MAX_BARS:]]
    workers = sorted({(t["rank"][i] or 0, t["worker_pid"][i]) for i in shown})
    labels = [f"rank {r} pid {p}" for r, p in workers]
    names = sorted({t["name"][i] or "?" for i in shown})
    palette = [c for c in (Category10[10] if len(names) <= 9 else Category20[20])
               if c not in ("#d62728", "#ff9896")]  # (red: reserved for failures)
    colour = {n: palette[k % len(palette)] for k, n in enumerate(names)}
    src = ColumnDataSource({
        "y": [f"rank {t['rank'][i] or 0} pid {t['worker_pid'][i]}" for i in shown],
        "left": t["start"][shown] - t0, "right": end[shown] - t0,
        "name": [t["name"][i] or "?" for i in shown],
        "colour": [colour[t["name"][i] or "?"] for i in shown],
        "state": [t["state"][i] for i in shown],
        "task_id": [_hex(t["task_id"][i]) for i in shown],
        "ms": (end[shown] - t["start"][shown]) * 1000,
        "error": [t["error_type"][i] or "" for i in shown],
        "outline": [_STATE_COLOURS["FAILED"] if t["state"][i] == "FAILED" else None
                    for i in shown]})
    title = "Task timeline by worker"
    if shown.size < ran.size:
        title += f" (the {shown.size:,} longest of {ran.size:,} executions)"
    fig = figure(title=title, y_range=labels or ["(no worker)"], width=WIDTH,
                 height=max(200, min(900, 24 * len(labels) + 80)),
                 x_axis_label="seconds since the session started",
                 tools="xpan,xwheel_zoom,box_zoom,reset,save")
    fig.hbar(y="y", left="left", right="right", height=0.8, fill_color="colour",
             line_color="outline", line_width=2, source=src)  # (failed: outlined red)
    fig.add_tools(HoverTool(tooltips=[("task", "@name"), ("id", "@task_id"),
                                      ("state", "@state"), ("ms", "@ms{0.000}"),
                                      ("error", "@error")]))
    return fig


def _per_function(t: dict):
    """Tasks per function by state, and the quantiles of their durations."""
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    names = sorted({n or "?" for n in t["name"]})
    states = [s for s in _STATE_COLOURS if s in set(t["state"])] or ["FINISHED"]
    name_arr = np.array([n or "?" for n in t["name"]], dtype=object)
    state_arr = np.array(t["state"], dtype=object)
    counts = {s: [int(np.sum((name_arr == n) & (state_arr == s))) for n in names]
              for s in states}
    h = max(200, min(700, 26 * len(names) + 90))
    fig = figure(title="Tasks per function, by state", y_range=names or ["(none)"],
                 width=WIDTH // 2, height=h, x_axis_label="tasks", tools="save")
    fig.hbar_stack(states, y="name", height=0.8, source=ColumnDataSource(
        {"name": names, **counts}), color=[_STATE_COLOURS[s] for s in states],
        legend_label=states)
    fig.legend.location = "bottom_right"
    dur = (t["end"] - t["start"]) * 1000
    q = {k: [] for k in ("name", "p5", "q1", "med", "q3", "p95", "n")}
    for n in names:
        d = dur[(name_arr == n) & ~np.isnan(dur)]
        if d.size:
            p = np.percentile(np.maximum(d, 1e-3), [5, 25, 50, 75, 95])
            for k, v in zip(("p5", "q1", "med", "q3", "p95"), p):
                q[k].append(float(v))
            q["name"].append(n)
            q["n"].append(int(d.size))
    box = figure(title="Task durations per function (ms: 5-25-50-75-95th percentiles)",
                 y_range=q["name"] or ["(none)"], width=WIDTH // 2, height=h,
                 x_axis_type="log", x_axis_label="ms", tools="save")
    src = ColumnDataSource(q)
    box.segment("p5", "name", "p95", "name", source=src, color="#555555")
    box.hbar(y="name", left="q1", right="q3", height=0.6, source=src, color="#3a78b5",
             alpha=0.8)
    box.scatter("med", "name", source=src, color="black", size=7, marker="diamond")
    box.add_tools(HoverTool(tooltips=[("function", "@name"), ("tasks", "@n"),
                                      ("median ms", "@med{0.000}"),
                                      ("95th ms", "@p95{0.000}")]))
    return fig, box


def _utilisation(t: dict, workers: list, t0: float, now: float):
    """Busy workers over alive workers, over time; and each worker's busy share."""
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    ran = ~np.isnan(t["start"])
    starts = t["start"][ran]
    ends = np.where(np.isnan(t["end"][ran]), now, t["end"][ran])
    w_start = np.array([w["start_time_ms"] / 1000 for w in workers if w["start_time_ms"]])
    w_end = np.array([(w["end_time_ms"] or now * 1000) / 1000 for w in workers
                      if w["start_time_ms"]])
    stop = max([now if not ends.size else float(ends.max()), t0 + 1e-3])
    at = np.linspace(t0, stop, SAMPLES)
    busy = _running_at(starts, ends, at)
    alive = _running_at(w_start, w_end, at) if w_start.size else np.zeros_like(busy)
    share = np.where(alive > 0, np.minimum(busy / np.maximum(alive, 1), 1.0), 0.0)
    over = figure(title="Worker utilisation over time (tasks running / workers alive)",
                  width=WIDTH // 2, height=280, x_axis_label="seconds", y_range=(0, 1.05),
                  tools="xpan,xwheel_zoom,reset,save")
    src = ColumnDataSource({"x": at - t0, "share": share, "busy": busy, "alive": alive})
    over.varea(x="x", y1=0, y2="share", source=src, color="#3a78b5", alpha=0.5)
    over.line(x="x", y="share", source=src, color="#3a78b5")
    over.add_tools(HoverTool(tooltips=[("s", "@x{0.00}"), ("running", "@busy"),
                                       ("workers", "@alive")], mode="vline"))
    keys = sorted({(w["rank"] or 0, w["pid"]) for w in workers})
    life = {(w["rank"] or 0, w["pid"]): (w["start_time_ms"] / 1000 if w["start_time_ms"]
                                         else t0, (w["end_time_ms"] or now * 1000) / 1000)
            for w in workers}
    spent = dict.fromkeys(keys, 0.0)
    for i in np.flatnonzero(ran):
        k = (t["rank"][i] or 0, t["worker_pid"][i])
        if k in spent:
            e = t["end"][i] if not np.isnan(t["end"][i]) else now
            spent[k] += e - t["start"][i]
    labels = [f"rank {r} pid {p}" for r, p in keys]
    frac = [min(1.0, spent[k] / max(1e-9, life[k][1] - life[k][0])) for k in keys]
    per = figure(title="Busy share of each worker's life", y_range=labels or ["(none)"],
                 width=WIDTH // 2, height=max(280, min(700, 22 * len(keys) + 80)),
                 x_range=(0, 1.05), tools="save")
    per.hbar(y=labels, right=frac, height=0.7, color="#4c9a2a")
    return over, per


def _store(objects: list, t0: float, end: float):
    """Each node's object-store use over time (its objects' sizes from stored to freed),
    and the bytes spilled so far when objects were spilled."""
    from bokeh.models import Div
    from bokeh.palettes import Category10
    from bokeh.plotting import figure

    if not objects:
        return Div(text="<h3>Object store use</h3><p>No value was put in the shared store "
                        "(values under <code>inline_max</code> travel in the messages).</p>",
                   width=WIDTH)
    fig = figure(title="Object store use (MiB) by node", width=WIDTH, height=280,
                 x_axis_label="seconds", tools="xpan,xwheel_zoom,reset,save")
    ranks = sorted({o["rank"] or 0 for o in objects})
    for k, r in enumerate(ranks):
        steps = [(t0, 0)]
        for o in objects:
            if (o["rank"] or 0) == r and o["created_ms"] is not None:
                steps.append((o["created_ms"] / 1000, o["object_size"] or 0))
                if o["freed_ms"] is not None:
                    steps.append((o["freed_ms"] / 1000, -(o["object_size"] or 0)))
        steps.sort()
        xs = [x - t0 for x, _ in steps] + [end - t0]
        used = np.cumsum([d for _, d in steps]) / 2**20
        fig.step(xs, list(used) + [used[-1]], mode="after",
                 color=Category10[10][k % 10], legend_label=f"rank {r}")
    spilled = sorted((o["created_ms"] / 1000 - t0, o["object_size"] or 0)
                     for o in objects if o["spilled_path"] and o["created_ms"])
    if spilled:
        xs = [x for x, _ in spilled] + [end - t0]
        total = list(np.cumsum([s for _, s in spilled]) / 2**20)
        fig.step(xs, total + total[-1:], mode="after", color="#8e44ad",
                 line_dash="dashed", legend_label="spilled (so far)")
    fig.legend.location = "top_left"
    return fig


def _failures(t: dict):
    from bokeh.models import ColumnDataSource, DataTable, TableColumn

    bad = [i for i, s in enumerate(t["state"]) if s == "FAILED"][:MAX_FAILURES]
    data = {"name": [t["name"][i] for i in bad],
            "task_id": [_hex(t["task_id"][i]) for i in bad],
            "error_type": [t["error_type"][i] or "" for i in bad],
            "where": [f"rank {t['rank'][i] or 0} pid {t['worker_pid'][i] or '-'}"
                      for i in bad],
            "message": [_last_line(t["error_message"][i]) for i in bad]}
    cols = [TableColumn(field="name", title="task", width=140),
            TableColumn(field="task_id", title="id", width=140),
            TableColumn(field="error_type", title="error type", width=190),
            TableColumn(field="where", title="where", width=130),
            TableColumn(field="message", title="error (last line)", width=480)]
    return DataTable(source=ColumnDataSource(data), columns=cols, width=WIDTH,
                     height=min(400, 28 * len(bad) + 40), index_position=None,
                     reorderable=False)  # (reordering needs jquery-ui: not inlined)


def _last_line(text: str | None) -> str:
    """An error's last line (its type and message, under a traceback)."""
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


# ----------------------------------------------------------------------------- page
def _summary(reader, t: dict, t0: float, now: float) -> str:
    states: dict[str, int] = {}
    for s in t["state"]:
        states[s] = states.get(s, 0) + 1
    actors = reader.actors()
    nodes = reader.nodes()
    span = _end(reader, now) - t0
    parts = ", ".join(f"{v:,} {k.lower()}" for k, v in sorted(states.items())) or "none"
    where = os.path.realpath(reader.session)
    return (f"<h1>mpray session report</h1><p><b>{html.escape(where)}</b></p>"
            f"<p>{len(nodes)} node(s), {span:.2f} s; tasks: {parts}; "
            f"actors: {len(actors)} ({sum(1 for a in actors if a['state'] == 'DEAD')} "
            f"dead)</p>")


def _end(reader, now: float) -> float:
    """When the session ended (wall seconds): its last node's end; running: now."""
    ended = [n["end_time_ms"] for n in reader.nodes()]
    return max(ended) / 1000 if ended and None not in ended else now


def build(reader, now: float | None = None) -> str:
    """The report of the session ``reader`` reads, as one HTML page."""
    _bokeh()
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.models import Div
    from bokeh.resources import INLINE

    now = time.time() if now is None else now
    t = _tasks(reader)
    t0 = _origin(reader, t)
    workers = reader.workers()
    counts, box = _per_function(t)
    over, per = _utilisation(t, workers, t0, now)
    failed = sum(1 for s in t["state"] if s == "FAILED")
    parts = [Div(text=_summary(reader, t, t0, now), width=WIDTH),
             _timeline(t, t0, now), row(counts, box), row(over, per),
             _store(reader.objects(), t0, _end(reader, now)),
             Div(text=f"<h2>Failures ({failed:,}"
                      f"{f', the first {MAX_FAILURES}' if failed > MAX_FAILURES else ''})"
                      "</h2>", width=WIDTH)]
    if failed:
        parts.append(_failures(t))
    page = file_html(column(*parts), resources=INLINE, title="mpray report")
    head, sep, tail = page.rpartition("</body>")  # (the page's own: the inlined
    return head + _MARKER_JS + sep + tail        # scripts contain the string too)


def write(reader, path: str) -> None:
    page = build(reader)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
