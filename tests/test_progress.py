"""Progress bars: ``mpray.util.progress`` (a bar over many refs, as Dask's) and
``mpray.experimental.tqdm_ray`` (tqdm inside tasks and actors, drawn by the driver).
The remote bars' cases run a driver script in a subprocess and read what it drew."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time

import pytest

import mpray
from mpray.control.logs import TQDM_MAGIC
from mpray.experimental import tqdm_ray
from mpray.util import progress

from conftest import REPO


@mpray.remote
def sleep_then(x, s):
    time.sleep(s)
    return x


@mpray.remote
def fail_if(x, bad, s=0.0):
    time.sleep(s)
    if bad:
        raise ValueError(f"task {x} failed")
    return x


def _counts(text: str, total: int) -> list[int]:
    """The ``n/total`` counts a tqdm bar drew, in order."""
    return [int(m) for m in re.findall(rf"(\d+)/{total} \[", text)]


# ----------------------------------------------------------------------------- progress
def test_progress_moves_as_refs_finish_and_reaches_total(ray_module):
    refs = [sleep_then.remote(i, 0.15 * i) for i in range(8)]
    out = io.StringIO()
    t0 = time.monotonic()
    failed = progress(refs, desc="work", file=out, mininterval=0)
    took = time.monotonic() - t0
    assert failed == []
    # it returned once all were done, not before
    ready, _ = mpray.wait(refs, num_returns=len(refs), timeout=0)
    assert len(ready) == len(refs)
    counts = _counts(out.getvalue(), 8)
    assert counts[-1] == 8 and "work: 100%" in out.getvalue()
    assert counts == sorted(counts)
    assert len({c for c in counts if 0 < c < 8}) >= 2, counts  # it moved in between
    assert took < 10
    assert mpray.get(refs) == list(range(8))


def test_progress_counts_failed_tasks_as_done(ray_module):
    refs = [fail_if.remote(i, i % 3 == 1, 0.05 * i) for i in range(7)]
    out = io.StringIO()
    failed = progress(refs, file=out)
    assert failed == [refs[1], refs[4]]  # in the input's order
    text = out.getvalue()
    assert _counts(text, 7)[-1] == 7
    assert "failed=2" in text
    for r in failed:
        with pytest.raises(ValueError):
            mpray.get(r)


def test_progress_timeout_raises(ray_module):
    fast, slow = sleep_then.remote(1, 0.0), sleep_then.remote(2, 1.5)
    out = io.StringIO()
    t0 = time.monotonic()
    with pytest.raises(mpray.exceptions.GetTimeoutError, match="1 of 2"):
        progress([fast, slow], file=out, timeout=0.4)
    assert time.monotonic() - t0 < 1.3
    assert _counts(out.getvalue(), 2)[-1] == 1  # the bar stopped where it was
    assert mpray.get(slow) == 2  # (the task itself goes on)
    with pytest.raises(mpray.exceptions.GetTimeoutError):
        progress(sleep_then.remote(3, 1.0), file=io.StringIO(), timeout=0)


def test_progress_does_not_busy_loop(ray_module):
    ref = sleep_then.remote(0, 1.5)
    cpu0 = time.process_time()
    progress(ref, file=io.StringIO())
    assert time.process_time() - cpu0 < 0.5  # (a busy loop would take ~1.5 s)


def test_progress_accepts_one_ref_and_counts_repeats_once(ray_module):
    ref = sleep_then.remote(5, 0.0)
    out = io.StringIO()
    assert progress(ref, file=out) == []
    assert _counts(out.getvalue(), 1)[-1] == 1
    out = io.StringIO()
    progress((r for r in [ref, ref]), file=out)  # (any iterable; wait() wants no repeats)
    assert _counts(out.getvalue(), 1)[-1] == 1


@pytest.mark.parametrize("bad", [42, "abc", None, [1, 2], {"a": 1}])
def test_progress_rejects_what_is_not_refs(ray_module, bad):
    with pytest.raises(TypeError, match="progress\\(\\) expects"):
        progress(bad, file=io.StringIO())


def test_progress_rejects_a_bad_timeout(ray_module):
    with pytest.raises(ValueError, match="timeout"):
        progress([sleep_then.remote(0, 0)], timeout=-1, file=io.StringIO())


# ----------------------------------------------------------------------------- tqdm_ray
def test_tqdm_ray_in_the_driver_draws_a_real_bar(capsys):
    bar = tqdm_ray.tqdm(range(5), desc="local")
    assert list(bar) == [0, 1, 2, 3, 4]
    manual = tqdm_ray.tqdm(desc="manual", total=3, unit="job")
    manual.update(2)
    manual.set_description("renamed")
    manual.update()
    manual.close()
    manual.close()  # (a second close does nothing)
    tqdm_ray.safe_print("between bars")
    out, err = capsys.readouterr()
    assert "local: 100%" in err and "5/5" in err
    assert "renamed: 100%" in err and "3/3" in err and "job/s" in err
    assert "between bars" in out
    assert TQDM_MAGIC not in out + err
    assert tqdm_ray.instance().open_bars() == []  # (drawn directly, not as a worker's)
    with pytest.raises(ValueError):
        next(iter(tqdm_ray.tqdm(total=1)))


def _run(body: str, tmp_path) -> subprocess.CompletedProcess:
    e = dict(os.environ, MPRAY_LOG_DIR=str(tmp_path))
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", PRELUDE + body], env=e, capture_output=True,
                       text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    assert TQDM_MAGIC not in r.stdout + r.stderr  # the bars' lines are never printed
    return r


PRELUDE = """
import os, sys, time
import mpray
from mpray.experimental import tqdm_ray

@mpray.remote
def loop(name, n, step_s, flush_s):
    for _ in tqdm_ray.tqdm(range(n), desc=name, flush_interval_s=flush_s):
        time.sleep(step_s)
    print("loop", name, "ended")
    return os.getpid()

@mpray.remote
class Holder:
    def __init__(self):
        self.bar = tqdm_ray.tqdm(desc="held", total=10, flush_interval_s=0)
        self.bar.update(4)

    def ping(self):
        return 1

@mpray.remote
def numpy_counts():
    import numpy as np

    bar = tqdm_ray.tqdm(desc="np", total=np.int64(3), flush_interval_s=0)
    for _ in range(3):
        bar.update(np.int64(1))  # (numbers JSON has no type for)
    bar.close()
    return os.getpid()

def wait_bars(n, timeout=20):  # the driver's bars once it draws n of them
    end = time.monotonic() + timeout
    while len(tqdm_ray.instance().open_bars()) != n and time.monotonic() < end:
        time.sleep(0.02)
    return tqdm_ray.instance().open_bars()
"""


def _bar_lines(session: str) -> list[dict]:
    """The bar states the workers wrote into their log files."""
    states = []
    logs = os.path.join(session, "logs")
    for n in sorted(os.listdir(logs)):
        for line in open(os.path.join(logs, n)):
            if TQDM_MAGIC in line:
                states.append(json.loads(line.split(TQDM_MAGIC, 1)[1]))
    return states


def test_tqdm_ray_in_a_task_is_drawn_by_the_driver(tmp_path):
    r = _run("""
ctx = mpray.init(num_cpus=1)
pid = mpray.get(loop.remote("fast", 40, 0.005, 0))
pid2 = mpray.get(loop.remote("slow", 30, 0.01, 100))
pid3 = mpray.get(numpy_counts.remote())
mpray.shutdown()
print("pids", pid, pid2, pid3, "session", ctx["session_dir"])
""", tmp_path)
    pid, pid2, pid3, session = re.search(r"pids (\d+) (\d+) (\d+) session (\S+)",
                                         r.stdout).groups()
    # the driver drew the worker's bar, labelled as the worker's lines are, to its total
    assert re.search(rf"\(loop pid={pid}\) fast: 100%\|[^\r\n]*\| 40/40", r.stderr), r.stderr
    assert re.search(rf"\(loop pid={pid2}\) slow: 100%\|[^\r\n]*\| 30/30", r.stderr)
    assert re.search(rf"\(numpy_counts pid={pid3}\) np: 100%\|[^\r\n]*\| 3/3", r.stderr)
    # ... and the task's other lines still reach the driver as lines of their own
    assert f"(loop pid={pid}) loop fast ended" in r.stdout.splitlines()
    states = _bar_lines(session)
    fast = [s for s in states if s["desc"] == "fast"]
    slow = [s for s in states if s["desc"] == "slow"]
    # flush_interval_s=0: every update; 100: only when made and when closed
    assert len(fast) == 42 and len(slow) == 2
    assert [s["x"] for s in slow] == [0, 30] and slow[-1]["closed"]
    assert {s["pid"] for s in fast} == {int(pid)} and fast[-1]["total"] == 40
    assert len({s["uuid"] for s in states}) == 3


def test_tqdm_ray_two_concurrent_bars_and_close_at_shutdown(tmp_path):
    r = _run("""
mpray.init(num_cpus=3)
a, b = loop.remote("a", 30, 0.05, 0.05), loop.remote("b", 30, 0.05, 0.05)
most = []
while len(mpray.wait([a, b], num_returns=2, timeout=0.05)[0]) < 2:
    bars = tqdm_ray.instance().open_bars()
    if len(bars) > len(most):
        most = bars
mpray.get([a, b])
print("most", sorted(most))
print("ended", wait_bars(0))  # (the driver reads the workers' lines every 0.1 s)
h = Holder.remote()
mpray.get(h.ping.remote())
print("held", wait_bars(1))
mpray.shutdown()
print("after", tqdm_ray.instance().open_bars())
""", tmp_path)
    most = re.search(r"most (.*)", r.stdout).group(1)
    # both drawn at once, on lines of their own
    assert re.fullmatch(r"\[\(0, '\(loop pid=\d+\) [ab]'\), \(1, '\(loop pid=\d+\) [ab]'\)\]",
                        most), most
    for name in "ab":
        assert re.search(rf"\(loop pid=\d+\) {name}: 100%\|[^\r\n]*\| 30/30", r.stderr)
    assert "ended []" in r.stdout  # closed with the remote bars
    # an actor's bar stays open while the actor lives; shutdown closes it
    assert re.search(r"held \[\(0, '\(Holder pid=\d+\) held'\)\]", r.stdout), r.stdout
    assert re.search(r"\(Holder pid=\d+\) held:  40%\|[^\r\n]*\| 4/10", r.stderr)
    assert "after []" in r.stdout
