"""``mpray report``: one self-contained HTML file per session, opened in a real headless
browser (Debian's ``chromium``, which the README's test command installs) to check that
every plot renders with no script error; and its parts on sessions too big to draw."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import mpray
from mpray.control import report
from mpray.control.reader import open_reader

from conftest import REPO

pytestmark = pytest.mark.timeout(120)
BROWSER_TIMEOUT_S = 60


@mpray.remote
def work(s):
    time.sleep(s)
    return s


@mpray.remote
def fails(i):
    raise ValueError(f"bad input {i}")


@mpray.remote
class Keeper:
    def __init__(self):
        self.kept = []

    def keep(self, n):
        self.kept.append(np.ones(n))  # (in the arena: the store's curve rises)
        return len(self.kept)


def _workload():
    assert len(mpray.get([work.remote(0.001 * (i % 5)) for i in range(60)])) == 60
    k = Keeper.remote()
    assert mpray.get([k.keep.remote(1 << 17) for _ in range(3)]) == [1, 2, 3]
    big = mpray.put(np.ones(1 << 18))
    for r in [fails.remote(i) for i in range(3)]:
        with pytest.raises(ValueError):
            mpray.get(r)
    return big


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("the report test opens it in Debian's chromium: install it with the "
                    "README's test command (apt-get install chromium)")
    return path


def _render(path: str) -> tuple[str, str]:
    """The page's DOM after its scripts ran, and the browser's console (stderr)."""
    r = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={os.path.dirname(path)}/chromium-profile",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000",
         "--dump-dom", f"file://{path}"],
        capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, r.stderr


def test_the_report_of_a_finished_session_renders_in_a_browser(tmp_path):
    log_dir = str(tmp_path / "logs")
    ctx = mpray.init(num_cpus=2, log_dir=log_dir)
    try:
        _workload()
    finally:
        mpray.shutdown()
    out = tmp_path / "report.html"
    e = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             MPRAY_LOG_DIR=log_dir)
    r = subprocess.run([sys.executable, "-m", "mpray.control.cli", "report", "-o", str(out)],
                       env=e, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert os.path.basename(ctx["session_dir"]) in out.read_text()
    page = out.read_text()
    # self-contained: Bokeh's scripts inline, nothing fetched from the network
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?:", page)
    for text in ("work", "fails", "Keeper.keep", "bad input 2", "TASK_EXECUTION_EXCEPTION"):
        assert text in page, text
    dom, console = _render(str(out))
    status = re.search(r'<pre id="mpray-report-status" data-views="(\d+)" '
                       r'data-errors="(\d+)"[^>]*>([^<]*)', dom)
    assert status is not None, "the page's scripts never ran"
    views, errors, text = int(status[1]), int(status[2]), status[3]
    assert errors == 0, text
    assert views >= 1, "Bokeh drew nothing"
    assert "Uncaught" not in console, console[-2000:]


def test_the_report_of_a_running_session(ray_start):
    _workload()
    page = report.build(open_reader())
    assert "fails" in page and "Failures (3)" in page


class _Rows:
    """A reader of a session too big to draw (no processes: the rows alone)."""

    session = "/nowhere/session_big"

    def __init__(self, n: int) -> None:
        t0 = 1000.0
        self.rows = [{"task_id": i, "name": f"f{i % 12}", "state": "FINISHED" if i % 37
                      else "FAILED", "rank": i % 2, "worker_pid": 100 + i % 8,
                      "submitted": t0 + i * 1e-4, "started": t0 + i * 1e-4,
                      "finished": t0 + i * 1e-4 + (i % 50) * 1e-5,
                      "error_type": None if i % 37 else "TASK_EXECUTION_EXCEPTION",
                      "error_message": None if i % 37 else "ValueError: x"}
                     for i in range(n)]

    def task_rows(self):
        return self.rows

    def nodes(self):
        return [{"start_time_ms": 1e6, "end_time_ms": 1e6 + 5000}]

    def workers(self):
        return [{"rank": r, "pid": 100 + p, "start_time_ms": 1e6, "end_time_ms": 1e6 + 5000}
                for r in range(2) for p in range(8)]

    def actors(self):
        return []

    def objects(self):
        return [{"rank": 0, "created_ms": 1e6 + 10, "freed_ms": None, "object_size": 1 << 20,
                 "spilled_path": "/spill/x"}]


def test_a_session_too_big_to_draw_keeps_its_longest_tasks_and_every_count():
    n = report.MAX_BARS + 5000
    page = report.build(_Rows(n), now=1005.0)
    assert f"the {report.MAX_BARS:,} longest of {n:,} executions" in page
    failed = len(range(0, n, 37))
    assert f"Failures ({failed:,}, the first {report.MAX_FAILURES})" in page
    assert "spilled (so far)" in page
