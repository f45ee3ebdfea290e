"""Workers' output: to per-worker log files in the session, and from there to the
driver's terminal line by line, labelled as Ray labels it.

Data flow::

    worker: fd 1/2 ─ dup2 ─▶ logs/worker-<pid>.out / .err   (C extensions' output too)
            sys.stdout/err ─ Labelled ─▶ a ":mpray-task:<task id>:<label>" line before the
                                         first output of each task (none if it prints
                                         nothing: no cost on the task's path)
    driver: LogMonitor thread (every POLL_S) ─ reads what each file gained ─▶ whole lines
            ─ Dedup (Ray's: a line seen from several workers within 5 s is printed once,
              then "[repeated Nx across cluster]") ─▶ "(label pid=P[, rank=R]) line" on
              the driver's stdout / stderr, one write per line (never two lines mixed)
    mpray logs (cli.py) ─ read_lines() ─▶ the same files, filtered by task, pid or rank

Under MPI, rank 0's driver reads every rank's directory of the session that it can
(one host, or ``log_dir`` on a shared filesystem, which the job scripts set).  A rank
whose directory it cannot read (another host's disk) runs a LogMonitor of its own with a
``sink``: its lines go to its agent, as RLogs to rank 0, into ``remote_lines`` there.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time

MARK = ":mpray-task:"
POLL_S = 0.1  # how often the driver looks for new output
RESCAN_S = 0.5  # how often it looks for new workers' files
DEDUP_WINDOW_S = 5.0  # Ray's RAY_DEDUP_LOGS_AGG_WINDOW_S
TQDM_MAGIC = "__mpray_tqdm__"  # lines of experimental.tqdm_ray bars (drawn by the driver)
_NAME = re.compile(r"worker-(\d+)\.(out|err)$")


# ----------------------------------------------------------------------------- workers
class Labelled:
    """A worker's sys.stdout/sys.stderr: says which task wrote what follows."""

    def __init__(self, stream, loop) -> None:
        self._stream = stream
        self._loop = loop
        self._last: int | None = None
        # (bound here, not looked up through __getattr__: the worker flushes both
        # streams after every task, and that lookup would cost a microsecond each)
        self.flush = stream.flush
        self.fileno = stream.fileno
        self.isatty = stream.isatty

    def write(self, text: str) -> int:
        tid = self._loop.client.current_task
        if tid != self._last:
            self._last = tid
            if tid is not None:
                self._stream.write(f"{MARK}{tid:016x}:{self._loop.label()}\n")
        return self._stream.write(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):  # (flush, fileno, isatty, encoding, buffer, ...)
        return getattr(self._stream, name)


def redirect_output(logs_dir: str, loop) -> None:
    """In a new worker: fd 1 and 2 to its log files, the Python streams labelled and
    line-buffered (a long task's lines show while it runs)."""
    pid = os.getpid()
    try:
        for fd, ext in ((1, "out"), (2, "err")):
            f = os.open(os.path.join(logs_dir, f"worker-{pid}.{ext}"),
                        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.dup2(f, fd)
            os.close(f)
    except OSError:
        return  # (no session directory: the output stays where it was)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = getattr(sys, name)
        if _fd_of(stream) != fd:  # (the driver's was no file there: pytest's capture,
            # Jupyter's kernel streams; inherited, they would keep the output in-process)
            stream = open(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace",
                          closefd=False)
        else:
            try:
                stream.reconfigure(line_buffering=True)
            except (AttributeError, ValueError):
                pass
        setattr(sys, name, Labelled(stream, loop))


def _fd_of(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # (io.UnsupportedOperation is both)
        return None


# ----------------------------------------------------------------------------- reading
class _Tail:
    __slots__ = ("fd", "pid", "err", "rank", "partial", "label", "task")

    def __init__(self, fd: int, pid: int, err: bool, rank: int) -> None:
        self.fd, self.pid, self.err, self.rank = fd, pid, err, rank
        self.partial = b""
        self.label = "worker"
        self.task = ""

    def lines(self, final: bool = False) -> list[str]:
        """What the file gained, as whole lines (the rest waits for its newline)."""
        chunks = [self.partial]
        while True:
            try:
                b = os.read(self.fd, 1 << 20)
            except OSError:
                break
            if not b:
                break
            chunks.append(b)
        data = b"".join(chunks)
        if not data:
            return []
        if final and not data.endswith(b"\n"):
            data += b"\n"
        head, _sep, self.partial = data.rpartition(b"\n")
        if not _sep:
            self.partial = data
            return []
        return head.decode("utf-8", "replace").split("\n")


def _rank_of(node_dir: str) -> int:
    base = os.path.basename(node_dir.rstrip("/"))
    return int(base[5:]) if base.startswith("rank-") and base[5:].isdigit() else 0


class Dedup:
    """Ray's log deduplication: a line (its words with digits left out) seen from more
    than one worker within the window is printed once, then counted; when the window
    ends, "<line> [repeated Nx across cluster]" is printed if it came again."""

    _NUMBERS = re.compile(r"(\d+|0x[0-9a-fA-F]+)")

    def __init__(self, on: bool, window: float = DEDUP_WINDOW_S) -> None:
        self.on = on
        self.window = window
        self.recent: dict[str, list] = {}  # key -> [first seen, count, line, prefix, srcs]

    def key(self, line: str) -> str:
        return " ".join(w for w in line.split() if not self._NUMBERS.search(w))

    def feed(self, prefix: str, line: str, source, now: float) -> list[tuple[str, str]]:
        """(prefix, line) pairs to print now."""
        out: list[tuple[str, str]] = []
        k = self.key(line) if self.on and TQDM_MAGIC not in line else ""
        if not k:
            out.append((prefix, line))
        else:
            st = self.recent.get(k)
            if st is None:
                self.recent[k] = [now, 0, line, prefix, {source}]
                out.append((prefix, line))
            else:
                st[4].add(source)
                if len(st[4]) > 1:
                    st[1] += 1
                    st[2], st[3] = line, prefix
                else:
                    out.append((prefix, line))
        out.extend(self.expire(now))
        return out

    def expire(self, now: float, everything: bool = False) -> list[tuple[str, str]]:
        out = []
        for k in list(self.recent):
            st = self.recent[k]
            if not everything and now - st[0] < self.window:
                continue
            if st[1] > 1:
                out.append((st[3], f"{st[2]} [repeated {st[1]}x across cluster]"))
                st[0], st[1] = now, 0
                if not everything:
                    continue
            elif st[1] == 1:
                out.append((st[3], st[2]))
            del self.recent[k]
        return out


class LogMonitor:
    """The driver's reader of every worker's log files in the session."""

    def __init__(self, session: str, dedup: bool, mpi: bool, on_magic=None, sink=None,
                 only: str | None = None) -> None:
        self.session = session
        self.mpi = mpi
        # a rank whose directory rank 0 cannot read (another host's disk): its lines go
        # to ``sink`` (its agent, which sends them to rank 0), read from ``only`` its own
        self.sink = sink
        self.only = only
        self.dedup = Dedup(dedup)
        self.on_magic = on_magic  # (line) -> None: tqdm_ray's bars
        self.tails: dict[str, _Tail] = {}
        self._next_scan = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="mpray-logs", daemon=True)

    def start(self) -> "LogMonitor":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - printing logs must never end the driver
                pass

    def _scan(self) -> None:
        from .sessions import node_dirs

        for d in [self.only] if self.only else node_dirs(self.session):
            logs = os.path.join(d, "logs")
            try:
                names = os.listdir(logs)
            except OSError:
                continue
            for n in names:
                m = _NAME.match(n)
                path = os.path.join(logs, n)
                if m is None or path in self.tails:
                    continue
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                self.tails[path] = _Tail(fd, int(m.group(1)), m.group(2) == "err",
                                         _rank_of(d))

    def poll(self, final: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if final or now >= self._next_scan:
                self._next_scan = now + RESCAN_S
                self._scan()
            for t in self.tails.values():
                for line in t.lines(final):
                    self._line(t, line, now)
            for prefix, line in self.dedup.expire(now, everything=final):
                self._print(prefix, line, False)

    def _line(self, t: _Tail, line: str, now: float) -> None:
        if line.startswith(MARK):
            t.task, _sep, t.label = line[len(MARK):].partition(":")
            return
        if self.sink is not None:
            self.sink((t.rank, t.pid, t.err, t.label, line))
            return
        self._emit(t.rank, t.pid, t.err, t.label, line, now)

    def remote_lines(self, lines: list) -> None:
        """Lines of ranks whose directories this driver cannot read (their agents sent
        them): printed as this rank's are, deduplicated with them."""
        with self._lock:
            now = time.monotonic()
            for rank, pid, err, label, line in lines:
                self._emit(rank, pid, err, label, line, now)

    def _emit(self, rank: int, pid: int, err: bool, label: str, line: str,
              now: float) -> None:
        if TQDM_MAGIC in line and self.on_magic is not None:
            self.on_magic(line)
            return
        where = f", rank={rank}" if self.mpi else ""
        prefix = f"({label} pid={pid}{where})"
        for p, text in self.dedup.feed(prefix, line, (rank, pid), now):
            self._print(p, text, err)

    @staticmethod
    def _print(prefix: str, line: str, err: bool) -> None:
        stream = sys.stderr if err else sys.stdout
        bars = sys.modules.get("tqdm")  # (bars on the terminal: lifted around the line,
        try:                            # as Ray does, or the two would tear each other)
            if bars is not None and bars.tqdm._instances:
                with bars.tqdm.external_write_mode(file=stream):
                    stream.write(f"{prefix} {line}\n")
                    stream.flush()
            else:
                stream.write(f"{prefix} {line}\n")
                stream.flush()
        except (OSError, ValueError):
            pass

    def stop(self) -> None:
        """After the workers ended: print what is left, close the files."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        try:
            self.poll(final=True)
        finally:
            for t in self.tails.values():
                try:
                    os.close(t.fd)
                except OSError:
                    pass
            self.tails.clear()


def read_lines(session: str, task: str | None = None, pid: int | None = None,
               rank: int | None = None) -> list[tuple[str, str]]:
    """(prefix, line) of every worker's output in a session, for ``mpray logs``:
    filtered by task id (its lines only), worker pid or rank."""
    from .sessions import node_dirs

    out: list[tuple[str, str]] = []
    for d in node_dirs(session):
        r = _rank_of(d)
        if rank is not None and r != rank:
            continue
        logs = os.path.join(d, "logs")
        try:
            names = sorted(os.listdir(logs))
        except OSError:
            continue
        for n in names:
            m = _NAME.match(n)
            if m is None or pid is not None and int(m.group(1)) != pid:
                continue
            with open(os.path.join(logs, n), "rb") as f:
                text = f.read().decode("utf-8", "replace")
            label, cur = "worker", ""
            for line in text.splitlines():
                if line.startswith(MARK):
                    cur, _s, label = line[len(MARK):].partition(":")
                    continue
                if task is not None and not cur.startswith(task.lower()[:16]):
                    continue
                out.append((f"({label} pid={m.group(1)}, rank={r})", line))
    return out
