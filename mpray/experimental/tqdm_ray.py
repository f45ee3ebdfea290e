"""``mpray.experimental.tqdm_ray``: Ray's distributed tqdm.  A bar made inside a remote
task or actor is drawn by the driver, which places every worker's bars on lines of
their own (many processes drawing on one terminal would overwrite each other).

Data flow::

    worker: tqdm(...).update() ─ at most once per flush_interval_s (always at creation
            and close) ─▶ one line "__mpray_tqdm__{json state}" on sys.stdout
            ─▶ logs/worker-<pid>.out
    driver: LogMonitor thread (control/logs.py) ─ a line holding TQDM_MAGIC, never
            printed ─▶ on_magic(line) ─▶ _BarManager ─ one tqdm.tqdm per remote bar
            (its uuid), on the driver's stderr, at the lowest free line (order of
            appearance) ─▶ closed when the remote bar closes, or at shutdown
    driver process itself: tqdm(...) draws a real tqdm.tqdm at once (no lines)

tqdm itself is imported only when a bar is drawn (it takes ~25 ms to import).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, Iterable

from .. import _global
from ..control.logs import TQDM_MAGIC

__all__ = ["tqdm", "safe_print", "instance"]

RAY_TQDM_MAGIC = TQDM_MAGIC  # (Ray's name for it)
ProgressBarState = dict  # what a worker's line carries (see tqdm._state)
REDRAW_S = 0.15  # a state tqdm skipped (drawn within its 0.1 s) is drawn this much later


def _in_worker() -> bool:
    """A worker process (task or actor): its output goes through the log files."""
    return _global.worker_loop is not None  # (set in worker_main only; None in a driver)


def _real_tqdm():
    import tqdm as real  # (deferred: see the module's docstring)

    return real.tqdm


# ----------------------------------------------------------------------------- the bar
class tqdm:
    """Experimental: a tqdm usable from remote tasks and actors (Ray's API).  In a worker
    it draws nothing: its state goes to the driver, which draws it (see the module's
    docstring); in the driver it is a real ``tqdm.tqdm``.  Supports a subset of tqdm's
    arguments; ``position`` is used by driver-side bars only (the driver places the
    workers' bars by order of appearance)."""

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None,
                 total: int | float | None = None, unit: str | None = None,
                 position: int | None = None, flush_interval_s: float | None = 1.0) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self._iterable = iterable
        self._desc = "" if desc is None else str(desc)
        self._total = total
        self._unit = unit or "it"
        self._pos = position or 0
        self._flush_interval_s = 1.0 if flush_interval_s is None else flush_interval_s
        self._uuid = os.urandom(8).hex()
        self._x = 0
        self._closed = False
        self._last_flush = 0.0
        self._bar = None
        if _in_worker():
            self._dump(force=True)  # (the bar shows on the driver before the first update)
        else:
            self._bar = _real_tqdm()(total=total, desc=desc, unit=self._unit,
                                     position=position)

    def __iter__(self):
        if self._iterable is None:
            raise ValueError("No iterable provided")
        try:
            for x in self._iterable:
                yield x
                self.update(1)  # (after the body, as tqdm: counts the items done)
        finally:
            self.close()

    def __enter__(self) -> "tqdm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int | float = 1) -> None:
        """Implements ``tqdm.tqdm.update``."""
        self._x += n
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._dump()

    def set_description(self, desc: str) -> None:
        """Implements ``tqdm.tqdm.set_description``."""
        self._desc = "" if desc is None else str(desc)
        if self._bar is not None:
            self._bar.set_description(desc)
        else:
            self._dump()

    def refresh(self) -> None:
        """Implements ``tqdm.tqdm.refresh``: in a worker, sends the state now."""
        if self._bar is not None:
            self._bar.refresh()
        else:
            self._dump(force=True)

    def close(self) -> None:
        """Implements ``tqdm.tqdm.close`` (a second close does nothing)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            self._dump(force=True)

    def __del__(self) -> None:  # (as tqdm: a bar dropped unclosed closes)
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    def _dump(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_flush < self._flush_interval_s:
            return
        self._last_flush = now
        # one write of one whole line: the driver's reader takes lines, and the worker's
        # stdout is line-buffered, so it goes out now
        line = f"{TQDM_MAGIC}{json.dumps(self._state(), default=_plain)}\n"
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except (OSError, ValueError):  # (stdout closed: at exit)
            pass

    def _state(self) -> ProgressBarState:
        loop, client = _global.worker_loop, _global.client
        return {"uuid": self._uuid, "pid": os.getpid(),
                "rank": getattr(client, "rank", 0), "label": loop.label(),
                "desc": self._desc, "total": self._total, "x": self._x,
                "unit": self._unit, "pos": self._pos, "closed": self._closed}


def _plain(value: Any) -> Any:
    """A count or total JSON has no type for (numpy's numbers): as a Python number."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def safe_print(*args, **kwargs) -> None:
    """``print`` that does not tear the driver's bars: they are cleared, the text is
    printed, they are drawn again.  In a worker, a plain print (its lines reach the
    driver through the log files)."""
    if _in_worker() or "tqdm" not in sys.modules:  # (no tqdm yet: no bar to tear)
        print(*args, **kwargs)
        return
    kwargs.setdefault("flush", True)  # (the text before the bars are drawn again)
    with _real_tqdm().external_write_mode(file=kwargs.get("file")):
        print(*args, **kwargs)


# ----------------------------------------------------------------------------- driver
def parse_line(line: str) -> ProgressBarState | None:
    """The state in a worker's bar line (None: not one)."""
    i = line.find(TQDM_MAGIC)
    if i < 0:
        return None
    try:
        state = json.loads(line[i + len(TQDM_MAGIC):])
    except ValueError:
        return None
    if not isinstance(state, dict) or not isinstance(state.get("uuid"), str):
        return None
    return state


class _BarManager:
    """The driver's bars for the workers' ones.  Runs on the LogMonitor's thread (and
    the driver's at shutdown): a lock keeps the bars whole."""

    def __init__(self, file: Any = None) -> None:
        self.file = file  # None: tqdm's default, the driver's sys.stderr when drawn
        self._lock = threading.Lock()
        self._bars: dict[str, list] = {}  # uuid -> [tqdm.tqdm, last state], as they came
        self._stale: set[str] = set()  # bars whose last update tqdm did not draw
        self._timer: threading.Timer | None = None

    def process_line(self, line: str) -> None:
        state = parse_line(line)
        if state is not None:
            self.process_state_update(state)

    def process_state_update(self, state: ProgressBarState) -> None:
        """Draw a worker bar's new state: a new bar, an update, or its end."""
        with self._lock:
            uid = state["uuid"]
            entry = self._bars.get(uid)
            if entry is None:
                entry = self._bars[uid] = [self._new_bar(state), state]
            bar, last = entry
            if state.get("desc") != last.get("desc"):
                bar.set_description(_desc(state), refresh=False)
            if state.get("total") != bar.total:
                bar.total = state.get("total")
            delta = (state.get("x") or 0) - bar.n
            if delta:
                bar.update(delta)
            entry[1] = state
            if state.get("closed"):
                del self._bars[uid]
                self._stale.discard(uid)
                bar.refresh()  # (tqdm skips draws within 0.1 s: the final count shows)
                bar.close()
            elif bar.last_print_n != bar.n:
                self._redraw_soon(uid)

    def _redraw_soon(self, uid: str) -> None:
        """tqdm draws a bar at most every 0.1 s, and a poll of the workers' files brings
        several states at once: the last one is drawn a little later, else it would
        show only with the bar's next state (which may be long in coming)."""
        self._stale.add(uid)
        if self._timer is None:
            self._timer = threading.Timer(REDRAW_S, self._redraw)
            self._timer.daemon = True
            self._timer.start()

    def _redraw(self) -> None:
        with self._lock:
            self._timer = None
            for uid in self._stale:
                entry = self._bars.get(uid)
                if entry is not None:
                    entry[0].refresh()
            self._stale.clear()

    def _new_bar(self, state: ProgressBarState):
        # position=None: tqdm's lowest free line, among every bar of the driver (also
        # mpray.util.progress's): the order of appearance, with no line drawn twice;
        # leave=False (as Ray): a finished bar's line goes to the next one
        return _real_tqdm()(total=state.get("total"), desc=_desc(state),
                            unit=state.get("unit") or "it", leave=False, file=self.file)

    def open_bars(self) -> list[tuple[int, str]]:
        """(line, description) of the bars drawn now, in order of appearance (line 0:
        the first of the bars' block)."""
        with self._lock:
            return [(abs(bar.pos), _desc(st)) for bar, st in self._bars.values()]

    def close_all(self) -> None:
        """Close the bars left open (their workers ended without closing them)."""
        with self._lock:
            bars, self._bars = list(self._bars.values()), {}
            self._stale.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        for bar, _state in bars:
            bar.refresh()  # (their last state shows before they go)
            bar.close()


def _desc(state: ProgressBarState) -> str:
    """As the driver labels the workers' lines: ``(label pid=P[, rank=R]) desc``."""
    rank = state.get("rank") or 0
    where = f", rank={rank}" if rank else ""
    return f"({state.get('label', 'worker')} pid={state.get('pid')}{where}) " \
           f"{state.get('desc') or ''}".rstrip()


_manager: _BarManager | None = None
_manager_lock = threading.Lock()


def instance() -> _BarManager:
    """The driver's bar manager (made on first use)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = _BarManager()
        return _manager


def on_magic(line: str) -> None:
    """The LogMonitor's callback for the workers' bar lines (see session.py)."""
    instance().process_line(line)


def close_remote_bars() -> None:
    """At shutdown: close the workers' bars still drawn."""
    if _manager is not None:
        _manager.close_all()
