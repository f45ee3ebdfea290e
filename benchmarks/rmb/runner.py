"""The child's per-figure runner: the hooks the segmented ray_perf.main()
calls, Ray's ``timeit`` wrapped to count calls and apply ``--only``/``--skip``,
and a time limit (SIGALRM) on each figure and on the setup before it."""

from __future__ import annotations

import signal
import sys
import time
import traceback

from rmb.segments import selected


class FigureTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so that `except Exception` inside the
    library under test does not swallow it."""

    def __init__(self, msg, calls=None, in_call_s=None):
        super().__init__(msg)
        self.calls = calls
        self.in_call_s = in_call_s


class RestartChild(BaseException):
    """After a time-out the runtime under test may be wedged (a lock held, a
    reply never read), so the child stops and the parent starts a fresh one."""

    def __init__(self, seg, phase):
        super().__init__(f"restart after a time-out in segment {seg} ({phase})")
        self.seg = seg
        self.phase = phase


class Runner:
    def __init__(self, pl, opts, emit):
        self.segs = pl["segments"]
        self.only = opts["only"]
        self.skip = opts["skip"]
        self.skip_figures = set(opts["skip_figures"])
        self.skip_segments = set(opts["skip_segments"])
        self.limit = opts["figure_timeout"]
        self.warmup_sleep = opts["warmup_sleep"]
        self.emit = emit
        self.reported = set(self.skip_figures)
        self.active = None  # figure inside timeit
        self.seg = None
        self.calls = 0
        self.call_t0 = None
        self.real_timeit = None

    # alarm -------------------------------------------------------------
    def arm(self):
        signal.setitimer(signal.ITIMER_REAL, self.limit)

    def disarm(self):
        signal.setitimer(signal.ITIMER_REAL, 0)

    def on_alarm(self, signum, frame):
        if self.active is not None:
            in_call = (time.perf_counter() - self.call_t0) if self.call_t0 is not None else None
            where = (f"{self.calls} call(s) of the timed function completed"
                     + (f"; the call in progress had run {in_call:.1f} s"
                        if in_call is not None else ""))
            raise FigureTimeout(f"no result within the figure limit of {self.limit:g} s "
                                f"(warm-up sleep {self.warmup_sleep:g} s included): {where}",
                                self.calls, in_call)
        raise FigureTimeout(f"setup (ray_perf code outside timeit) did not finish "
                            f"within {self.limit:g} s")

    # hooks called by the transformed main ------------------------------
    def want_fig(self, name):
        return selected(name, self.only, self.skip) and name not in self.skip_figures

    def enter(self, i):
        if i in self.skip_segments:
            self.emit(ev="seg_skipped", seg=i)
            return False
        self.seg = i
        self.emit(ev="seg_start", seg=i)
        self.arm()
        return True

    def want(self, i):
        return any(self.want_fig(f) for f in self.segs[i]["figures"])

    def leave(self, i):
        self.disarm()
        self.active = None
        self.seg = None

    def fail(self, i, exc):
        self.disarm()
        if isinstance(exc, KeyboardInterrupt):
            raise exc
        kind = "timeout" if isinstance(exc, FigureTimeout) else "error"
        text = f"{type(exc).__name__}: {exc}"
        tb = "".join(traceback.format_exception(exc))
        print(f"[segment {i}] {text}\n{tb}", file=sys.stderr, flush=True)
        remaining = [f for f in self.segs[i]["figures"]
                     if f not in self.reported and self.want_fig(f)]
        if self.active is not None:
            self._fail_timed(i, exc, kind, text, tb, remaining)
        else:
            for f in remaining:
                self._report_error(f, i, kind, "setup", text, tb)
        if not remaining and self.active is None:
            self.emit(ev="seg_error", seg=i, kind=kind, error=text, traceback=tb)
        phase = "setup" if self.active is None else "timed"
        self.active = None
        if kind == "timeout":
            raise RestartChild(i, phase)

    def _report_error(self, fig, i, kind, phase, text, tb, **extra):
        self.emit(ev="error", fig=fig, seg=i, kind=kind, phase=phase,
                  error=text, traceback=tb, **extra)
        self.reported.add(fig)

    def _fail_timed(self, i, exc, kind, text, tb, remaining):
        """The figure inside timeit failed; the rest of its statement is not run."""
        extra = {}
        if isinstance(exc, FigureTimeout) and exc.calls is not None:
            # a hang: no call finished, or the one in progress ran for most of the limit
            extra = {"calls": exc.calls, "in_call_s": exc.in_call_s,
                     "hang": exc.calls == 0 or (exc.in_call_s or 0) > self.limit / 2}
        self._report_error(self.active, i, kind, "timed", text, tb, **extra)
        for f in remaining:
            if f != self.active:
                self._report_error(f, i, "not_run", "setup",
                                   f"not run: {self.active!r} raised in the same ray_perf "
                                   f"statement ({text})", tb)

    def timeit(self, name, fn, multiplier=1, warmup_time_sec=None):
        if not self.want_fig(name):
            self.emit(ev="filtered", fig=name)
            return [None]
        self.active = name
        self.calls = 0
        self.call_t0 = None
        self.emit(ev="start", fig=name, seg=self.seg)
        runner = self

        def counted(*a, **k):
            runner.call_t0 = time.perf_counter()
            r = fn(*a, **k)
            runner.call_t0 = None
            runner.calls += 1
            return r

        t0 = time.perf_counter()
        self.arm()
        res = self.real_timeit(name, counted, multiplier,
                               warmup_time_sec=self.warmup_sleep
                               if warmup_time_sec is None else warmup_time_sec)
        elapsed = time.perf_counter() - t0
        self.arm()  # the next setup gets a fresh limit
        self.active = None
        self.reported.add(name)
        if not res or res[0] is None:  # filtered by TESTS_TO_RUN / TESTS_TO_SKIP
            self.emit(ev="filtered", fig=name)
            return res
        _n, mean, sd = res[0]
        self.emit(ev="result", fig=name, mean=float(mean), sd=float(sd),
                  calls=self.calls, elapsed=elapsed, multiplier=multiplier)
        return res
