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
        self.pending: collections.deque = collections.deque()  # [rank, claim, frame]
        self.heads: dict[int, int] = {}  # rank -> its head as last read
        self._one = np.zeros(1, dtype=np.int64)
        self._got = np.zeros(1, dtype=np.int64)
        self._mark = np.zeros(1, dtype=np.int64)
        self._len = np.zeros(1, dtype=np.int64)

    # ------------------------------------------------------------------ sender
    def post(self, rank: int, frame: bytes) -> None:
        """Claim slots for ``frame`` in ``rank``'s inbox and write them (now, or on a
        later ``flush`` if the ring is full there)."""
        MPI = self.MPI
        n = -(-len(frame) // CHUNK)
        assert 0 < n <= NSLOTS // 2, len(frame)
        self._one[0] = n
        self.win.Fetch_and_op([self._one, MPI.INT64_T], [self._got, MPI.INT64_T], rank, 0,
                              MPI.SUM)
        self.win.Flush(rank)
        self.pending.append([rank, int(self._got[0]), frame])
        self.flush()

    def flush(self) -> bool:
        """Write claimed frames whose slots are free; True when none is left."""
        blocked: set[int] = set()
        left = collections.deque()
        while self.pending:
            rec = self.pending.popleft()
            rank, claim, frame = rec
            if rank in blocked or not self._room(rank, claim + -(-len(frame) // CHUNK)):
                blocked.add(rank)  # (its later frames wait too: they were claimed later)
                left.append(rec)
                continue
            self._write(rank, claim, frame)
        self.pending = left
        return not left

    def _room(self, rank: int, end: int) -> bool:
        if end - self.heads.get(rank, 0) <= NSLOTS:
            return True
        MPI = self.MPI
        self.win.Get([self._got, MPI.INT64_T], rank, (8, 1, MPI.INT64_T))
        self.win.Flush(rank)
        self.heads[rank] = int(self._got[0])
        return end - self.heads[rank] <= NSLOTS

    def _write(self, rank: int, claim: int, frame: bytes) -> None:
        MPI, win = self.MPI, self.win
        view = memoryview(frame)
        n = -(-len(frame) // CHUNK)
        self._len[0] = len(frame)
        for i in range(n):
            base = HDR + ((claim + i) % NSLOTS) * SLOT
            if i == 0:
                win.Put([self._len, MPI.INT64_T], rank, (base + 8, 1, MPI.INT64_T))
            chunk = view[i * CHUNK:(i + 1) * CHUNK]
            win.Put([chunk, MPI.BYTE], rank, (base + 16, len(chunk), MPI.BYTE))
        win.Flush(rank)  # the bytes are there before any ready mark is
        for i in range(n):
            self._mark[0] = claim + i + 1
            base = HDR + ((claim + i) % NSLOTS) * SLOT
            win.Put([self._mark, MPI.INT64_T], rank, (base, 1, MPI.INT64_T))
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
