"""The ``mpray`` command: status, list, summary, timeline, report and logs of a running
or finished session (click, which comes with sqlite-utils).

Data flow::

    mpray <command> [--session DIR|NAME|latest] ─ sessions.find ─▶ the session directory
        status / list / summary / timeline / report ─▶ reader.Reader (every rank's store)
        logs ─▶ logs.read_lines (the workers' log files), --follow: again as they grow
    ─▶ a table or JSON on stdout, or a file (-o)

Sessions are looked up where ``init()`` puts them: ``MPRAY_LOG_DIR``, else
``<MPRAY_TMPDIR or TMPDIR>/mpray-<uid>``.  Without one, each command says where it looked.
"""

from __future__ import annotations

import json
import sys
import time

import click

from . import sessions
from .reader import BRIEF, Reader, select

KINDS = ("tasks", "actors", "objects", "nodes", "workers")


def _session(spec: str | None) -> str:
    try:
        return sessions.find(spec)
    except LookupError as e:
        raise click.ClickException(str(e)) from None


def _reader(spec: str | None) -> Reader:
    try:
        r = Reader(_session(spec))
    except LookupError as e:
        raise click.ClickException(str(e)) from None
    r.sync()
    return r


session_option = click.option(
    "--session", "session", default=None, metavar="DIR|NAME|latest",
    help="the session to read (default: the newest, running or finished)")


@click.group()
def main() -> None:
    """Observe mpray sessions: what ran where, what failed, what printed."""


def _table(rows: list[dict], columns) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return ",".join(f"{k}={_num(x)}" for k, x in v.items())
    return str(v)


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@main.command()
@session_option
def status(session: str | None) -> None:
    """Nodes, resources used and total, workers, store use."""
    r = _reader(session)
    running = sessions.is_running(r.session)
    click.echo(f"session {r.session} ({'running' if running else 'finished'})")
    last: dict[int, dict] = {}
    for u in r.usage():
        last[u["rank"]] = u
    for n in r.nodes():
        total = n["resources_total"]
        u = last.get(n["rank"])
        click.echo(f"node {n['rank']} {n['node_name']} ({n['node_id']}): {n['state']}")
        for res in sorted(total):
            if res in ("memory", "object_store_memory") or "_group_" in res:
                continue
            avail = u["available"].get(res, total[res]) if u else total[res]
            click.echo(f"  {res}: {_num(total[res] - avail)} used of {_num(total[res])}")
        if u is not None:
            click.echo(f"  object store: {u['store_used'] / 2**20:.1f} MiB used of "
                       f"{u['store_total'] / 2**20:.0f} MiB")
            click.echo(f"  workers: {u['workers']}, tasks at the node: {u['tasks']}")
    workers = r.workers()
    alive = sum(1 for w in workers if w["is_alive"])
    click.echo(f"workers: {alive} alive, {len(workers) - alive} ended")
    tasks = r.tasks()
    by: dict[str, int] = {}
    for t in tasks:
        by[t["state"]] = by.get(t["state"], 0) + 1
    click.echo("tasks: " + (", ".join(f"{v} {k}" for k, v in sorted(by.items())) or "none"))


@main.command(name="list")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="keep rows whose KEY is VALUE (KEY!=VALUE: is not); repeatable")
@click.option("--limit", default=100, show_default=True, help="at most this many rows")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--detail", is_flag=True, help="every field, not only the main ones")
@session_option
def list_(kind: str, filters, limit: int, fmt: str, detail: bool, session) -> None:
    """List tasks, actors, objects, nodes or workers."""
    preds = []
    for f in filters:
        key, op, value = _parse_filter(f)
        preds.append((key, op, value))
    r = _reader(session)
    try:
        rows = select(getattr(r, kind)(), kind, preds, limit, detail)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        cols = list(rows[0]) if rows and detail else list(BRIEF[kind])
        click.echo(_table(rows, cols))


def _parse_filter(text: str) -> tuple[str, str, str]:
    for op in ("!=", ">=", "<=", "=", ">", "<"):
        key, sep, value = text.partition(op)
        if sep and key:
            return key.strip(), op, value.strip()
    raise click.BadParameter(f"{text!r}: use KEY=VALUE (or KEY!=VALUE)",
                             param_hint="--filter")


@main.command()
@click.argument("kind", type=click.Choice(("tasks", "actors", "objects")))
@session_option
def summary(kind: str, session) -> None:
    """Counts per function (tasks), class (actors) or state (objects)."""
    from ..util import state

    address = _session(session)
    fn = {"tasks": state.summarize_tasks, "actors": state.summarize_actors,
          "objects": state.summarize_objects}[kind]
    data = fn(address=address)["cluster"]
    if kind == "objects":
        click.echo(f"objects in the store: {data['total_objects']} "
                   f"({data['total_size_mb']:.1f} MiB); by state: {data['state_counts']}")
        return
    rows = []
    for name, s in sorted(data["summary"].items()):
        rows.append({"name": name, "type": s.get("type", "ACTOR"),
                     **{k.lower(): v for k, v in s["state_counts"].items()}})
    states = sorted({k for row in rows for k in row} - {"name", "type"})
    click.echo(_table(rows, ["name", "type", *states]))


@main.command()
@click.option("-o", "--output", default="timeline.json", show_default=True,
              help="the Chrome trace file to write (open it in https://ui.perfetto.dev)")
@session_option
def timeline(output: str, session) -> None:
    """Write the session's task timeline as a Chrome trace."""
    from . import timeline as T

    events = T.trace(_reader(session))
    T.write(events, output)
    click.echo(f"{output}: {sum(1 for e in events if e.get('ph') == 'X')} task executions")


@main.command()
@click.option("-o", "--output", default="report.html", show_default=True,
              help="the HTML file to write (self-contained: open it anywhere)")
@session_option
def report(output: str, session) -> None:
    """Write a post-mortem report of the session: one HTML file with plots."""
    from . import report as R

    try:
        R.write(_reader(session), output)
    except RuntimeError as e:  # (Bokeh missing)
        raise click.ClickException(str(e)) from None
    click.echo(f"{output}: the report of {_session(session)}")


@main.command()
@click.option("--task", default=None, help="only what this task printed (its id)")
@click.option("--actor", default=None, help="only what this actor's process printed")
@click.option("--pid", type=int, default=None, help="only this worker's output")
@click.option("--rank", type=int, default=None, help="only this rank's workers")
@click.option("--follow", "-f", is_flag=True, help="keep printing as the files grow")
@session_option
def logs(task, actor, pid, rank, follow: bool, session) -> None:
    """Print workers' output, labelled as the driver prints it."""
    from .logs import read_lines

    path = _session(session)
    if actor is not None:
        found = [a for a in Reader(path).actors() if a["actor_id"].startswith(actor.lower())]
        if not found or found[0]["pid"] is None:
            raise click.ClickException(f"no actor {actor!r} with a process in {path}")
        pid, rank = found[0]["pid"], found[0]["rank"]
    shown = 0
    while True:
        lines = read_lines(path, task=task, pid=pid, rank=rank)
        for prefix, line in lines[shown:]:
            click.echo(f"{prefix} {line}")
        shown = len(lines)
        if not follow or not sessions.is_running(path):
            break
        time.sleep(0.5)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
