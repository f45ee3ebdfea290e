"""How a process waits: pumping its rings, blocking waits, futures, the pump thread.

A mixin of ``client.Client`` (the methods use its rings, doorbell, locks and caches).
Data flow::

    get / wait / request ─▶ wait_until(pred) ─▶ pump(spin): poll the rings up to spin_max
                                                 (yielding the CPU), then sleep on the
                                                 eventfd ─▶ _drain ─▶ Client._handle
    a task that waits    ─▶ _blocking_wait (worker_client: Blocked to the node, its CPU
                                            lent and queued work handed back; Unblocked)
    ref.future() / await ─▶ the background pump thread, while no user thread pumps

Only one thread drains the rings at a time (``_pump_lock``); the others wait on a
condition the pumping thread notifies.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from .. import exceptions as exc

_HOST = socket.gethostname()



class Evicted(Exception):
    """A value's place was evicted while a get was about to read it: read it again."""

class Waiting:
    def _init_waiting(self, spin_us: int) -> None:
        self._pump_lock = threading.Lock()
        self._cond = threading.Condition()
        self._waiters = 0  # threads waiting on _cond for the pumping thread
        self._replies: dict[int, Any] = {}
        self._futures: dict[int, list] = {}
        self._future_thread: threading.Thread | None = None
        self._bg_running = False
        self._bg_wake = threading.Event()
        self._fg_pump = 0.0  # when a user thread last pumped (the background one waits)
        # A foreground wait first polls its rings for up to spin_max seconds, yielding the
        # CPU between polls: a reply that comes within that time saves the sleep and the
        # wake-up (about 20 µs on each side here).  Adaptive: after a wait longer than
        # 4 × spin_max the next one sleeps at once, so long waits cost no polling.
        self.spin_max = spin_us * 1e-6
        self._spin = self.spin_max

    def pump(self, timeout: float | None, spin: bool = False) -> bool:
        """Handle what has arrived; if nothing has, block up to ``timeout`` for more
        (``spin``: a foreground wait, which may poll briefly before it sleeps)."""
        if self._drain():
            return True
        if timeout is not None and timeout <= 0:
            return False
        if spin and self.spin_max:
            t0 = time.perf_counter()
            if self._spin:
                end = t0 + min(self._spin, timeout if timeout is not None else 1.0)
                has_data = self._has_data
                yield_cpu = os.sched_yield
                clock = time.perf_counter
                while True:
                    if has_data():
                        return self._drain()
                    if clock() >= end:
                        break
                    yield_cpu()  # (releases the GIL too: other threads run meanwhile)
            got = self._sleep(timeout)
            # a short wait (a reply on its way, a caller in a loop): poll next time, as
            # polling a little longer may catch it; a long wait: sleep at once next time
            short = time.perf_counter() - t0 <= 4 * self.spin_max
            self._spin = self.spin_max if short else 0.0
            return got
        return self._sleep(timeout)

    def pump_locked(self, timeout: float | None) -> bool:
        """A worker's serving loop pumps: under the pump lock, as the background pump
        thread (``ref.future()``, ``await``) may run in this process too."""
        with self._pump_lock:
            got = self.pump(timeout, spin=True)
        if self._futures:
            self._notify_waiters()
        return got

    def _sleep(self, timeout: float | None) -> bool:
        bell = self._bell
        bell.sleep_begin()
        if self._has_data():
            bell.sleep_end()
            return self._drain()
        extra = (self._node_pidfd,) if self._node_pidfd is not None else ()
        dead = bell.wait(min(timeout, 1.0) if timeout is not None else 1.0, extra)
        if dead or (self.is_worker and os.getppid() != self.node_pid):
            self.node_dead = True
        got = self._drain()
        if self.node_dead and not got:
            raise exc.RaySystemError(
                f"the mpray node process (pid {self.node_pid}) on {_HOST} died; "
                "this session can no longer run tasks (call mpray.shutdown())"
            )
        return got

    def poll_nowait(self) -> None:
        """Handle whatever has arrived, if no other thread is pumping; never blocks."""
        self._fg_pump = time.monotonic()
        if self._pump_lock.acquire(False):
            try:
                if self._has_data():
                    self._drain()
            finally:
                self._pump_lock.release()

    def wait_until(self, pred, deadline: float | None) -> bool:
        """Pump (or wait for the pumping thread) until ``pred()`` or the deadline."""
        while not pred():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            remaining = None if deadline is None else deadline - now
            self._fg_pump = now
            if self._pump_lock.acquire(False):
                try:
                    self.pump(remaining, spin=True)
                finally:
                    self._pump_lock.release()
                    self._notify_waiters()
            else:
                with self._cond:
                    self._waiters += 1
                    try:
                        self._cond.wait(0.002 if remaining is None else min(remaining, 0.002))
                    finally:
                        self._waiters -= 1
        return True

    def _notify_waiters(self) -> None:
        """Wake threads waiting for the pumping one (none, mostly: then this is free; a
        waiter that starts waiting just after the check wakes within 2 ms anyway)."""
        if self._waiters:
            with self._cond:
                self._cond.notify_all()

    def request(self, msg_builder, timeout: float | None = 60.0, lend: bool = True):
        """Send a request carrying a fresh request id; return the node's reply.
        ``lend=False``: a reply the node gives at once (an arena range), which a task
        waits for holding its CPU (lending it would let another task start beside it:
        two cores ran four tasks returning arrays)."""
        req = self.new_ids(0)
        self.send([msg_builder(req)])
        return self.wait_reply(req, timeout, lend)

    def wait_reply(self, req: int, timeout: float | None = 60.0, lend: bool = True):
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = self._blocking_wait if lend else self.wait_until
        if not wait(lambda: req in self._replies, deadline):
            raise exc.GetTimeoutError(f"no reply from the mpray node within {timeout} s")
        return self._replies.pop(req)

    def _blocking_wait(self, pred, deadline) -> bool:
        """Wait for ``pred()`` (a worker also tells the node its task waits: see
        ``worker_client``)."""
        return pred() or self.wait_until(pred, deadline)

    # ------------------------------------------------------------------ futures
    def future(self, oid: int, ref=None):
        import concurrent.futures

        fut: concurrent.futures.Future = concurrent.futures.Future()
        if oid in self._values:
            self._resolve_futures(oid, [fut])
            return fut
        fut._mpray_ref = ref  # the future keeps its object alive until it resolves
        self._futures.setdefault(oid, []).append(fut)
        self._subscribe([oid] if self._needs_subscription(oid) else [])
        if oid in self._values:  # arrived meanwhile
            futs = self._futures.pop(oid, [])
            self._resolve_futures(oid, futs)
        self._ensure_future_thread()
        return fut

    def _resolve_futures(self, oid: int, futs: list) -> None:
        v = self._values.get(oid)
        if v is None:  # (evicted since it came: node/spill.py; it comes again)
            self._refuture(oid, futs)
            return
        kind, payload = v
        for f in futs:
            if f.done():
                continue
            try:
                f.set_result(self.materialize(oid, kind, payload))
            except Evicted:
                self._refuture(oid, [f])
            except BaseException as e:  # noqa: BLE001 - delivered to the future
                f.set_exception(e)
            f._mpray_ref = None

    def _refuture(self, oid: int, futs: list) -> None:
        self._futures.setdefault(oid, []).extend(futs)
        self._subscribe([oid])

    def _background_needed(self) -> bool:
        return (bool(self._futures) or self._release_due) and not self.closed

    def ensure_background_pump(self) -> None:
        ev = self._bg_wake
        if not ev.is_set():
            ev.set()
        if not self._bg_running:
            self._ensure_future_thread()

    def _ensure_future_thread(self) -> None:
        """One thread per client, started on first need, that pumps while futures wait or
        direct tasks are queued here, so they progress while the user's threads do
        something else.  It sleeps on an Event when not needed, and stays out of the way
        (no lock or GIL ping-pong) while a user thread pumps by itself."""
        self._bg_wake.set()
        if self._bg_running:
            return
        self._bg_running = True

        def run() -> None:
            wake = self._bg_wake
            while not self.closed:
                if self._release_due:  # (a burst's releases: out once it is over)
                    time.sleep(0.001)
                    self._release_due = False
                    self._flush_soon()
                if not self._background_needed():
                    # (cleared only now, just before sleeping: while this thread waits
                    # out a busy user thread below, the event stays set, so submitting
                    # threads do not set it, and wake this thread, task after task)
                    wake.clear()
                    if not self._background_needed():
                        wake.wait(0.5)
                    continue
                quiet = time.monotonic() - self._fg_pump
                if quiet < 0.005:  # a user thread pumps: it will again, look later
                    time.sleep(0.005 - quiet)
                    continue
                if not self._pump_lock.acquire(timeout=0.05):
                    continue  # another thread pumps; look again later
                try:
                    self.pump(0.05)
                except Exception as e:  # noqa: BLE001 - fail every pending future
                    for futs in list(self._futures.values()):
                        for f in futs:
                            if not f.done():
                                f.set_exception(e)
                    self._futures.clear()
                    return
                finally:
                    self._pump_lock.release()
                    self._notify_waiters()

        self._future_thread = threading.Thread(target=run, name="mpray-pump", daemon=True)
        self._future_thread.start()
