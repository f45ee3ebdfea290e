"""A rank's inbox: a ring of slots in an MPI window that other ranks' agents fill with
one-sided operations (docs/design.md §7): a sender claims slots with ``Fetch_and_op`` on the
ring's tail and writes its frame into them with ``Put``; the owner reads its own window
memory, in claim order, with no message matching and no receive posted.

Data flow::

    sender agent ─ Fetch_and_op(tail += n) ─▶ claim c ─┐   (slots c .. c+n-1 are free
                 ◀── Get(head) while the ring is full ──┘    once the owner's head passed
                 ─ Put(frame chunks), Flush ─ Put(ready marks c+1..), Flush ─▶ owner's window
    owner agent  ─ poll(): ready mark == claim + 1 ? copy the frame out, clear the marks,
                   head += n (published in the window for senders) ─▶ frames, in order

A sender's ``flush`` does each step for every rank it has frames for before it waits
(``Flush``) for any: the claims, then the frames' bytes, then their ready marks.

Layout (bytes): [0:8] tail (claims so far), [8:16] head (slots read so far), then
``NSLOTS`` slots of ``SLOT`` bytes: [0:8] ready mark (its claim number + 1), [8:16] the
frame's length (first slot of a frame), then up to ``SLOT - 16`` bytes of the frame.

A claim is never taken back: if the claimed slots are not free yet (the ring is full),
the sender keeps the frame and writes it on a later pass, once the owner's head has moved
on (the owner reads earlier claims without waiting for anyone, so it always does).
Frames larger than half the ring go as MPI messages, announced by a small frame that
keeps their place in the order (the agent does that).
"""

from __future__ import annotations

import collections

HDR = 64
SLOT = 8192
NSLOTS = 256
CHUNK = SLOT - 16
MAX_FRAME = NSLOTS // 2 * CHUNK


class Inbox:
    def __init__(self, MPI, comm, np) -> None:
        self.MPI = MPI
        self.np = np
        # collective: every rank makes its inbox window at the same point
        self.win = MPI.Win.Allocate(HDR + NSLOTS * SLOT, 1, comm=comm)
        self.mem = np.frombuffer(self.win.tomemory(), dtype=np.uint8)
        self.mem[:] = 0
        # no rank posts before every inbox is zeroed: a rank slow to get here (ranks
        # oversubscribing the cores) would wipe a frame already posted to it, lost for good
        comm.Barrier()
        self.words = self.mem[:HDR].view(np.int64)  # [tail, head, ...]
        self.head = 0  # claims read here so far
        # [rank, claim (None until claimed), frame], in the order posted
        self.pending: collections.deque = collections.deque()
        self.heads: dict[int, int] = {}  # rank -> its head as last read
        self._got = np.zeros(1, dtype=np.int64)

    # ------------------------------------------------------------------ sender
    def post(self, rank: int, frame: bytes) -> None:
        """Queue ``frame`` for ``rank``'s inbox: ``flush`` claims its slots and writes it
        (then, or on a later ``flush`` if the ring is full there)."""
        assert 0 < _slots(frame) <= NSLOTS // 2, len(frame)
        self.pending.append([rank, None, frame])

    def flush(self) -> bool:
        """Claim slots for the frames posted since the last call, and write the claimed
        frames whose slots are free; True when none is left.  The claims, and the writes,
        of one call go to every rank at once before any is waited for: across a network
        each completes only when its target's agent next polls (up to 4 ms when idle), so
        one after the other they cost a pass that reaches N idle ranks N such waits."""
        self._claim()
        blocked: set[int] = set()
        left, ready = collections.deque(), []
        while self.pending:
            rec = self.pending.popleft()
            rank, claim, frame = rec
            if rank in blocked or not self._room(rank, claim + _slots(frame)):
                blocked.add(rank)  # (its later frames wait too: they were claimed later)
                left.append(rec)
                continue
            ready.append(rec)
        self.pending = left
        if ready:
            self._write(ready)
        return not left

    def _claim(self) -> None:
        """One Fetch_and_op per rank for all its frames not claimed yet (consecutive
        slots, in the order they were posted), every rank's before the first Flush."""
        want: dict[int, int] = {}
        for rank, claim, frame in self.pending:
            if claim is None:
                want[rank] = want.get(rank, 0) + _slots(frame)
        if not want:
            return
        MPI, np = self.MPI, self.np
        got = {}
        for rank, n in want.items():  # (each op its own buffers until the Flush)
            got[rank] = (np.array([n], dtype=np.int64), np.zeros(1, dtype=np.int64))
            self.win.Fetch_and_op([got[rank][0], MPI.INT64_T], [got[rank][1], MPI.INT64_T],
                                  rank, 0, MPI.SUM)
        for rank in got:
            self.win.Flush(rank)
        nxt = {rank: int(g[1][0]) for rank, g in got.items()}
        for rec in self.pending:
            if rec[1] is None:
                rec[1] = nxt[rec[0]]
                nxt[rec[0]] += _slots(rec[2])

    def _room(self, rank: int, end: int) -> bool:
        if end - self.heads.get(rank, 0) <= NSLOTS:
            return True
        MPI = self.MPI
        self.win.Get([self._got, MPI.INT64_T], rank, (8, 1, MPI.INT64_T))
        self.win.Flush(rank)
        self.heads[rank] = int(self._got[0])
        return end - self.heads[rank] <= NSLOTS

    def _write(self, frames: list) -> None:
        """Every frame's bytes, Flush, then every frame's ready marks, Flush: a frame's
        bytes are there before any of its marks is.  Each Put has an origin buffer of
        its own (a length, a mark per slot): a Put may read it any time until the Flush
        (across a network it does; a reused mark buffer once marked all of a frame's
        slots with its last mark, and the owner waited for ever)."""
        MPI, np, win = self.MPI, self.np, self.win
        held, ranks = [], list(dict.fromkeys(rank for rank, _c, _f in frames))
        for rank, claim, frame in frames:
            view = memoryview(frame)
            length = np.array([len(frame)], dtype=np.int64)
            held.append(length)
            for i in range(_slots(frame)):
                base = HDR + ((claim + i) % NSLOTS) * SLOT
                if i == 0:
                    win.Put([length, MPI.INT64_T], rank, (base + 8, 1, MPI.INT64_T))
                chunk = view[i * CHUNK:(i + 1) * CHUNK]
                win.Put([chunk, MPI.BYTE], rank, (base + 16, len(chunk), MPI.BYTE))
        for rank in ranks:
            win.Flush(rank)
        for rank, claim, frame in frames:
            n = _slots(frame)
            marks = np.arange(claim + 1, claim + n + 1, dtype=np.int64)
            held.append(marks)
            for i in range(n):
                base = HDR + ((claim + i) % NSLOTS) * SLOT
                win.Put([marks[i:i + 1], MPI.INT64_T], rank, (base, 1, MPI.INT64_T))
        for rank in ranks:
            win.Flush(rank)

    # ------------------------------------------------------------------ owner
    def poll(self) -> list[bytes]:
        """Frames written into this rank's inbox, in claim order."""
        mem, np = self.mem, self.np
        self.win.Sync()  # (other ranks' Puts, visible to our loads)
        out = []
        while True:
            base = HDR + (self.head % NSLOTS) * SLOT
            if int(mem[base:base + 8].view(np.int64)[0]) != self.head + 1:
                break
            length = int(mem[base + 8:base + 16].view(np.int64)[0])
            n = -(-length // CHUNK)
            bases = [HDR + ((self.head + i) % NSLOTS) * SLOT for i in range(n)]
            if any(int(mem[b:b + 8].view(np.int64)[0]) != self.head + i + 1
                   for i, b in enumerate(bases)):
                break  # (a frame's later slots are still being written)
            parts = []
            for i, b in enumerate(bases):
                size = min(CHUNK, length - i * CHUNK)
                parts.append(mem[b + 16:b + 16 + size].tobytes())
                mem[b:b + 8] = 0
            self.head += n
            self.words[1] = self.head  # (senders read it to know when slots are free)
            out.append(b"".join(parts))
        if out:
            self.win.Sync()
        return out

    def free(self) -> None:
        """Collective."""
        self.mem = self.words = None
        self.win.Free()


def _slots(frame: bytes) -> int:
    return -(-len(frame) // CHUNK)
