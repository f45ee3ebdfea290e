"""``mpray@REV`` peers: mpray at another git revision, measured beside the working tree's.

The parent makes a detached git worktree of REV in a temporary folder (or uses a
checkout given with ``--rev-dir``), starts that peer's processes with the tree
first on ``PYTHONPATH``, and removes the worktree afterwards.  The worker checks
that ``mpray.__file__`` lies in the tree it was given and reports the file, so a
table never silently compares mpray with itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REV_DIR_HELP = ("use the checkout at PATH for the mpray@REV peer instead of a "
                "temporary git worktree (REV=PATH when there are several)")


def is_rev_peer(peer: str) -> bool:
    return peer.startswith("mpray@") and len(peer) > len("mpray@")


def _git(*args: str, cwd: str = REPO_ROOT) -> str:
    r = subprocess.run(["git", "-C", cwd, *args], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r.stdout.strip()


def commit_of(rev: str, cwd: str = REPO_ROOT) -> str:
    """The full hash of the commit REV names (RuntimeError when it names none)."""
    return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=cwd)


def describe_head(cwd: str = REPO_ROOT, path: str = "mpray") -> str | None:
    """HEAD's short hash, with ``+dirty(PATH/)`` when PATH has uncommitted
    changes; None where git cannot tell."""
    try:
        head = _git("rev-parse", "--short", "HEAD", cwd=cwd)
        dirty = _git("status", "--porcelain", "--", path, cwd=cwd)
    except (RuntimeError, OSError):
        return None
    return head + (f"+dirty({path}/)" if dirty else "") if head else None


def python_path(tree: str, env: dict) -> str:
    """``PYTHONPATH`` with ``tree`` first (before any entry already there)."""
    old = env.get("PYTHONPATH")
    return tree + (os.pathsep + old if old else "")


def check_import(module, root: str) -> str:
    """``module.__file__``; ImportError unless it lies under ``root``."""
    path = os.path.realpath(module.__file__)
    want = os.path.realpath(root) + os.sep
    if not path.startswith(want):
        raise ImportError(f"imported {module.__name__} from {path}, expected one "
                          f"under {want}")
    return module.__file__


def _rev_dirs(specs, revs: list[str]) -> dict[str, str]:
    """``--rev-dir [REV=]PATH`` entries as ``{REV: PATH}``."""
    out = {}
    for spec in specs or ():
        rev, sep, path = spec.partition("=")
        if not (sep and rev in revs):
            if len(revs) != 1:
                raise SystemExit(f"--rev-dir {spec}: say which peer it is for "
                                 f"(REV=PATH, REV one of {', '.join(revs) or 'none'})")
            rev, path = revs[0], spec
        if not os.path.isfile(os.path.join(path, "mpray", "__init__.py")):
            raise SystemExit(f"--rev-dir {spec}: no mpray/__init__.py under {path}")
        out[rev] = os.path.abspath(path)
    return out


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class Trees:
    """The source tree of every mpray peer, as a context manager.

    ``mpray`` is this checkout; ``mpray@REV`` a temporary detached worktree of
    REV (removed on exit) or the ``--rev-dir`` checkout given for it (kept)."""

    def __init__(self, peers, rev_dir_specs=(), log=sys.stderr):
        self.revs = list(dict.fromkeys(pe.partition("@")[2] for pe in peers
                                       if is_rev_peer(pe)))
        self.log = log
        self.given = _rev_dirs(rev_dir_specs, self.revs)
        self.commits = {}
        for rev in self.revs:
            try:
                self.commits[rev] = commit_of(rev)
            except RuntimeError:
                raise SystemExit(f"mpray@{rev}: {rev!r} names no commit in "
                                 f"{REPO_ROOT}") from None
        self.paths: dict[str, str] = {}
        self._made: list[tuple[str, str]] = []  # (temporary folder, worktree)

    def __enter__(self):
        # a SIGTERM (``timeout``, a batch system) unwinds like ^C, so the
        # worktrees are removed and the running worker's processes killed
        self._old_term = signal.signal(signal.SIGTERM, _interrupt)
        try:
            for rev in self.revs:
                self.paths[rev] = self.given.get(rev) or self._add_worktree(rev)
                self._describe(rev)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        signal.signal(signal.SIGTERM, self._old_term)

    def _add_worktree(self, rev: str) -> str:
        tmp = tempfile.mkdtemp(prefix="mpray-rev-")
        path = os.path.join(tmp, self.commits[rev][:12])
        self._made.append((tmp, path))
        _git("worktree", "add", "--detach", "--quiet", path, self.commits[rev])
        return path

    def _describe(self, rev: str) -> None:
        path, commit = self.paths[rev], self.commits[rev]
        how = "your checkout" if rev in self.given else "temporary git worktree"
        print(f"# mpray@{rev} = {commit[:12]}: {how} {path}", file=self.log)
        if rev not in self.given:
            return
        try:
            head = commit_of("HEAD", cwd=path)
            dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=path)
        except RuntimeError:
            print(f"#   note: {path} is not a git checkout; taken as {rev}", file=self.log)
            return
        if head != commit:
            print(f"#   note: {path} is at {head[:12]}, not at {commit[:12]}",
                  file=self.log)
        if dirty:
            print(f"#   note: {path} has uncommitted changes", file=self.log)

    def close(self) -> None:
        """Remove the worktrees this object made (``git worktree remove --force``)."""
        while self._made:
            tmp, path = self._made.pop()
            if os.path.isdir(path):
                try:
                    _git("worktree", "remove", "--force", path)
                except RuntimeError as e:
                    print(f"# {e}; removing {path} by hand", file=self.log)
                    shutil.rmtree(path, ignore_errors=True)
                    _git("worktree", "prune")
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"# removed worktree {path}", file=self.log)

    def root(self, peer: str) -> str:
        """The folder the peer's ``mpray`` must come from."""
        return self.paths[peer.partition("@")[2]] if is_rev_peer(peer) else REPO_ROOT

    def commit(self, peer: str) -> str | None:
        return self.commits.get(peer.partition("@")[2]) if is_rev_peer(peer) else None
