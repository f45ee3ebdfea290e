"""The control store (issue 10): what each table holds after a workload, the state API,
the timeline's shape, sessions kept after shutdown, the ``mpray`` command, the bound on
rows, and events merged in any order (no processes: the ingest alone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import mpray
from mpray.control import schema, sessions
from mpray.control.recorder import RUN
from mpray.util import state

from conftest import REPO, session_finished, wait_for

pytestmark = pytest.mark.timeout(120)


@mpray.remote
def square(x):
    return x * x


@mpray.remote
def boom():
    raise ValueError("boom on purpose")


@mpray.remote(max_retries=2, retry_exceptions=True)
def flaky(path):
    n = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(n + 1))
    if n < 1:
        raise RuntimeError("first try fails")
    return n


@mpray.remote
def parent():
    return mpray.get([square.remote(i) for i in range(3)])


@mpray.remote
def sleeper(s):
    time.sleep(s)
    return s


@mpray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n

    def big(self):
        return np.ones(1 << 18)  # 2 MiB: stored in the arena


@pytest.fixture
def workload(ray_start, tmp_path):
    """A session after tasks, nested tasks, an actor, a failure, a retry, a cancel."""
    refs = [square.remote(i) for i in range(5)]
    assert mpray.get(refs) == [i * i for i in range(5)]
    assert mpray.get(parent.remote()) == [0, 1, 4]
    c = Counter.options(name="counter", namespace="ns1").remote()
    assert mpray.get([c.incr.remote() for _ in range(3)]) == [1, 2, 3]
    big = mpray.get(c.big.remote())
    assert big.nbytes == 1 << 21
    with pytest.raises(mpray.exceptions.RayTaskError):
        mpray.get(boom.remote())
    assert mpray.get(flaky.remote(str(tmp_path / "count"))) == 1
    blockers = [sleeper.remote(1.0) for _ in range(2)]  # both CPUs busy
    victim = sleeper.remote(5.0)
    mpray.cancel(victim)
    with pytest.raises(mpray.exceptions.TaskCancelledError):
        mpray.get(victim)
    mpray.get(blockers)
    mpray.kill(c)
    return {"refs": refs, "victim": victim, "ctx": ray_start}


def _by_name(tasks):
    out = {}
    for t in tasks:
        out.setdefault(t["name"], []).append(t)
    return out


def test_tables_after_a_workload(workload):
    tasks = _by_name(state.list_tasks(limit=None, detail=True))
    assert [t["state"] for t in tasks["square"]].count("FINISHED") == 8  # 5 + 3 nested
    nested = [t for t in tasks["square"] if t["parent_task_id"] is not None]
    assert len(nested) == 3
    assert {t["parent_task_id"] for t in nested} == {tasks["parent"][0]["task_id"]}
    for t in tasks["square"]:
        assert t["worker_pid"] and t["node_id"] and t["start_time_ms"] <= t["end_time_ms"]
        assert t["type"] == "NORMAL_TASK"
    (b,) = tasks["boom"]
    assert b["state"] == "FAILED" and b["error_type"] == "TASK_EXECUTION_EXCEPTION"
    assert "ValueError: boom on purpose" in b["error_message"]
    (f,) = tasks["flaky"]
    assert f["state"] == "FINISHED" and f["attempt_number"] == 1  # (one retry)
    victim = [t for t in tasks["sleeper"] if t["task_id"] == workload["victim"].task_id()]
    assert victim and victim[0]["state"] == "FAILED"
    assert victim[0]["error_type"] == "TASK_CANCELLED"
    assert [t["type"] for t in tasks["Counter.__init__"]] == ["ACTOR_CREATION_TASK"]
    calls = tasks["Counter.incr"]
    assert len(calls) == 3 and {t["type"] for t in calls} == {"ACTOR_TASK"}
    assert {t["actor_id"] for t in calls} == {tasks["Counter.__init__"][0]["actor_id"]}


def test_actors_objects_workers_nodes(workload):
    time.sleep(0.3)  # (the kill's DEAD reaches the store in the node's next flush)
    (a,) = state.list_actors(filters=[("class_name", "=", "Counter")], detail=True)
    assert a["name"] == "counter" and a["ray_namespace"] == "ns1"
    assert a["state"] == "DEAD" and "killed" in a["death_cause"]
    assert a["pid"] > 0
    objs = state.list_objects(filters=[("object_size", ">=", 1 << 21)])
    assert objs, "the 2 MiB actor result is not in the objects table"
    assert all(o["rank"] == 0 for o in objs)
    workers = state.list_workers(limit=None)
    assert len(workers) >= 2 and all(w["pid"] > 0 for w in workers)
    assert a["pid"] in {w["pid"] for w in workers}
    (n,) = state.list_nodes()
    assert n["state"] == "ALIVE" and n["resources_total"]["CPU"] == 2.0
    assert state.get_actor(a["actor_id"])["class_name"] == "Counter"
    summary = state.summarize_tasks()["cluster"]
    assert summary["summary"]["square"]["state_counts"] == {"FINISHED": 8}
    assert summary["total_actor_tasks"] >= 4


def test_filters_limit_and_errors(workload):
    failed = state.list_tasks(filters=[("state", "=", "failed")])
    assert {t["name"] for t in failed} == {"boom", "sleeper"}
    assert len(state.list_tasks(limit=2)) == 2
    assert "error_message" not in state.list_tasks(limit=1)[0]  # (detail=False)
    with pytest.raises(ValueError, match="no field 'nope'"):
        state.list_tasks(filters=[("nope", "=", 1)])
    with pytest.raises(ValueError, match="predicate"):
        state.list_tasks(filters=[("state", "~", "x")])
    t = state.get_task(workload["refs"][0].task_id())
    assert t is not None and t["name"] == "square"


def test_timeline_is_a_chrome_trace(workload, tmp_path):
    events = mpray.timeline()
    xs = [e for e in events if e["ph"] == "X"]
    assert len(xs) >= 15
    for e in xs:
        assert {"name", "pid", "tid", "ts", "dur", "cat", "args"} <= set(e)
        assert e["dur"] >= 0 and e["args"]["task_id"]
    names = {e["pid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert list(names) == [0]
    threads = {e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {e["tid"] for e in xs} <= threads
    out = tmp_path / "trace.json"
    assert mpray.timeline(str(out)) is None
    assert len(json.loads(out.read_text())) == len(mpray.timeline())


def test_session_is_kept_and_readable_after_shutdown(tmp_path):
    log_dir = str(tmp_path / "logs")
    ctx = mpray.init(num_cpus=1, log_dir=log_dir, keep_sessions=2)
    mpray.get(square.remote(3))
    mpray.shutdown()
    path = ctx["session_dir"]
    assert os.path.dirname(path) == log_dir and session_finished(path)
    assert os.path.realpath(os.path.join(log_dir, "latest")) == path
    tasks = state.list_tasks(address=path)
    assert [t["name"] for t in tasks] == ["square"]
    for _ in range(3):  # only the newest keep_sessions finished sessions stay
        mpray.init(num_cpus=1, log_dir=log_dir, keep_sessions=2)
        mpray.shutdown()
    # (each writer prunes at its start, when the session before may still be ending)
    assert wait_for(lambda: not os.path.exists(path), 5), "the oldest session was kept"
    assert len(sessions.sessions(log_dir)) <= 4


def test_store_off(tmp_path):
    ctx = mpray.init(num_cpus=1, log_dir=str(tmp_path), control_store=False)
    mpray.get(square.remote(2))
    mpray.shutdown()
    assert not os.path.exists(os.path.join(ctx["session_dir"], "store.db"))
    with pytest.raises(LookupError, match="no control store"):
        state.list_tasks(address=ctx["session_dir"])


def test_rows_are_bounded(tmp_path):
    mpray.init(num_cpus=2, log_dir=str(tmp_path), store_max_tasks=50)
    mpray.get([square.remote(i) for i in range(400)])
    tasks = state.list_tasks(limit=None)
    mpray.shutdown()
    assert 50 <= len(tasks) <= 55


def test_events_merge_in_any_order(tmp_path):
    """A task's worker may be heard of before its owner: rows only move forward."""
    db = schema.open_store(str(tmp_path / "s.db"), create=True)
    ing = schema.Ingest(db, 1000)
    worker = {"pid": 11, "rank": 0, "node_id": "n"}
    owner = {"pid": 10, "rank": 0, "node_id": "n"}
    ing.apply([(worker, 100.0, [], (), (5, "f", 1.0, 2.0, True, None, None, None))])
    ing.apply([(owner, 100.0, [], (5, "f", 4, None, 0.5, 0, 7, "g", 4, 5, 0.6, 0), ())])
    rows = {r["task_id"]: r for r in db["tasks"].rows}
    assert rows[5]["state"] == "FINISHED" and rows[5]["submitted"] == 100.5
    assert rows[5]["worker_pid"] == 11 and rows[5]["owner_pid"] == 10
    assert rows[7]["state"] == "PENDING" and rows[7]["parent_task_id"] == 5
    ing.apply([(worker, 100.0, [(RUN, 7, "g", 3.0, 4.0, False, None,
                                 "TASK_EXECUTION_EXCEPTION", "ValueError: x")], (), ())])
    row = next(r for r in db["tasks"].rows if r["task_id"] == 7)
    assert row["state"] == "FAILED" and row["error_message"] == "ValueError: x"


def _cli(*args, env=None, check=True):
    e = dict(os.environ, **(env or {}))
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "mpray.control.cli", *args], env=e,
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_cli_on_a_running_and_a_finished_session(tmp_path):
    log_dir = str(tmp_path)
    env = {"MPRAY_LOG_DIR": log_dir}
    mpray.init(num_cpus=2, log_dir=log_dir)
    try:
        mpray.get([square.remote(i) for i in range(4)])
        with pytest.raises(mpray.exceptions.RayTaskError):
            mpray.get(boom.remote())
        out = _cli("status", env=env).stdout
        assert "(running)" in out and "CPU:" in out and "workers:" in out
        out = _cli("list", "tasks", "--filter", "state=FAILED", env=env).stdout
        assert "boom" in out and "square" not in out
        rows = json.loads(_cli("list", "tasks", "--format", "json", env=env).stdout)
        assert sorted(r["name"] for r in rows) == ["boom"] + ["square"] * 4
    finally:
        mpray.shutdown()
    out = _cli("status", env=env).stdout
    assert "(finished)" in out
    out = _cli("summary", "tasks", env=env).stdout
    assert "square" in out and "4" in out
    trace = tmp_path / "t.json"
    assert "5 task executions" in _cli("timeline", "-o", str(trace), env=env).stdout
    assert json.loads(trace.read_text())
    bad = _cli("list", "tasks", "--filter", "nonsense", env=env, check=False)
    assert bad.returncode != 0 and "KEY=VALUE" in bad.stderr
    none = _cli("status", env={"MPRAY_LOG_DIR": str(tmp_path / "empty")}, check=False)
    assert none.returncode != 0 and "no mpray session" in none.stderr


def _spool_file(spool, name, header, events):
    import marshal

    with open(os.path.join(spool, name), "wb") as f:
        f.write(marshal.dumps((header, 100.0, events, [], [])))


def test_a_batch_applied_but_not_unlinked_is_not_applied_twice(tmp_path):
    """A writer killed between its commit and its unlinks: the one that finishes its
    work (the node) skips what spool_done says was applied."""
    from mpray.control import writer

    spool = tmp_path / "spool"
    spool.mkdir()
    db = schema.open_store(str(tmp_path / "s.db"), create=True)
    ing = schema.Ingest(db, 1000)
    worker = {"pid": 11, "rank": 0, "node_id": "n"}
    runs = [(RUN, 5, "f", 1.0, 2.0, True, None, None, None)]
    _spool_file(spool, "11-000000001-1.ev", worker, runs)
    assert writer.drain(ing, str(spool)) == 1 and not os.listdir(spool)
    _spool_file(spool, "11-000000001-1.ev", worker, runs)  # (as if never unlinked)
    writer.drain(ing, str(spool))
    (row,) = db["tasks"].rows
    assert row["attempts"] == 1 and not os.listdir(spool)


def test_a_backlog_keeps_the_newest_tasks_and_every_other_event(tmp_path):
    """A writer that waited (busy CPUs) and finds more task events than the store
    keeps skips the oldest batches' task events, not their other events."""
    from mpray.control import writer
    from mpray.control.recorder import WORKER

    spool = tmp_path / "spool"
    spool.mkdir()
    db = schema.open_store(str(tmp_path / "s.db"), create=True)
    ing = schema.Ingest(db, 10)
    h = {"pid": 11, "rank": 0, "node_id": "n"}
    for b in range(20):  # 20 batches of 5 tasks, oldest first
        events = [(WORKER, 1000 + b, b, 1.0)] + [
            (RUN, 100 * b + i, "f", 1.0, 2.0, True, None, None, None) for i in range(5)]
        _spool_file(spool, f"11-{b:09d}-{len(events)}.ev", h, events)
        os.utime(spool / f"11-{b:09d}-{len(events)}.ev", (1000 + b, 1000 + b))
    while writer.drain(ing, str(spool)):
        pass
    kept = sorted(r["task_id"] for r in db["tasks"].rows)
    assert kept and min(kept) >= 1200 and max(kept) == 1904, kept  # the newest only
    assert db["workers"].count == 20  # (every batch's other events)


def test_a_writer_starved_at_shutdown_has_its_work_finished_by_the_node(tmp_path):
    """The writer runs on idle CPU only: one that gets none (here: stopped) is killed
    at shutdown and the node ingests what it left; nothing recorded is lost."""
    import psutil
    import signal

    ctx = mpray.init(num_cpus=2, log_dir=str(tmp_path))
    node = psutil.Process(mpray._global.session.node_pid)

    def writers():
        out = []
        for c in node.children():
            try:
                if os.sched_getscheduler(c.pid) == os.SCHED_IDLE:
                    out.append(c)
            except OSError:
                pass
        return out

    try:
        assert wait_for(lambda: len(writers()) == 1, 10), "no writer at idle priority"
        (w,) = writers()
        os.kill(w.pid, signal.SIGSTOP)
    except BaseException:
        mpray.shutdown()
        raise
    try:
        assert mpray.get([square.remote(i) for i in range(50)]) == [i * i for i in range(50)]
        t = time.monotonic()
        mpray.shutdown()
        assert time.monotonic() - t < 10
    finally:
        if w.is_running():
            w.kill()
    path = ctx["session_dir"]
    assert session_finished(path)
    tasks = state.list_tasks(address=path, limit=None)
    assert sorted(t["name"] for t in tasks) == ["square"] * 50
    assert {t["state"] for t in tasks} == {"FINISHED"}


@mpray.remote(max_retries=0)
def dies():
    os._exit(1)


def test_a_task_whose_leased_worker_died_is_failed_in_the_store(tmp_path):
    """Only its owner sees that end (the node never ran it, its worker recorded nothing):
    the owner records it, so the row is not left PENDING."""
    mpray.init(num_cpus=2, log_dir=str(tmp_path))
    try:
        assert mpray.get([square.remote(i) for i in range(20)])[3] == 9  # (leases now)
        with pytest.raises(mpray.exceptions.WorkerCrashedError):
            mpray.get(dies.remote(), timeout=30)
        (t,) = state.list_tasks(filters=[("name", "=", "dies")], detail=True)
    finally:
        mpray.shutdown()
    assert t["state"] == "FAILED" and t["error_type"] == "WORKER_DIED", t


def test_the_writers_plain_tables_are_those_sqlite_utils_makes(tmp_path):
    """The writer makes the tables without sqlite-utils (its import cost every node
    9 MiB): the same statements, so the file is the one sqlite-utils would make."""
    sqlite_utils = pytest.importorskip("sqlite_utils")
    ref = sqlite_utils.Database(str(tmp_path / "ref.db"))
    for name, (columns, pk) in schema.TABLES.items():
        ref[name].create(columns, pk=pk)
        for cols in schema.INDEXES.get(name, ()):
            ref[name].create_index(cols, if_not_exists=True)
        if name in schema.UNIQUE:
            ref[name].create_index(schema.UNIQUE[name], unique=True, if_not_exists=True)
    ref.execute("CREATE TABLE IF NOT EXISTS spool_done (name TEXT PRIMARY KEY)")
    plain = schema.open_store(str(tmp_path / "plain.db"), create=True, plain=True)
    schema.open_store(str(tmp_path / "plain.db"), create=True, plain=True)  # (again: no-op)
    master = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
    assert plain.execute(master).fetchall() == ref.execute(master).fetchall()
    assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
