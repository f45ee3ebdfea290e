"""Run under mpiexec -n N (N >= 2): the one-sided inbox on its own (no mpray session).

Every rank > 0 posts frames of many sizes (one slot, several, wrapping around the ring's
end) to rank 0, which reads slowly at first so that the ring fills and senders must wait
for room.  Rank 0 checks that each sender's frames arrive whole and in order.  Then a frame
posted right after a new inbox is made reaches a rank slow to make it ready.
Prints "OK inbox" on rank 0."""

import time

import numpy as np

from mpray_mpi import quiet_open_mpi

quiet_open_mpi()  # (before MPI_Init, as mpray.init() does)
from mpi4py import MPI  # noqa: E402

from mpray_mpi.inbox import CHUNK, MAX_FRAME, NSLOTS, Inbox  # noqa: E402

comm = MPI.COMM_WORLD
rank, size = comm.rank, comm.size
inbox = Inbox(MPI, comm, np)
inbox.win.Lock_all(MPI.MODE_NOCHECK)
comm.Barrier()
N = 300
sizes = [1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 7, MAX_FRAME, 100, 2 * CHUNK]


def frame(src: int, i: int) -> bytes:
    n = sizes[i % len(sizes)]
    head = f"{src}:{i}:".encode()
    return (head + bytes([i % 251]) * n)[:max(n, len(head))]


if rank == 0:
    seen = {src: 0 for src in range(1, size)}
    deadline = time.monotonic() + 60
    slow = 0
    while any(v < N for v in seen.values()):
        assert time.monotonic() < deadline, f"frames missing: {seen}"
        if slow < 20:  # let the ring fill up first
            slow += 1
            time.sleep(0.05)
        for f in inbox.poll():
            src, i = (int(x) for x in f.split(b":", 2)[:2])
            assert i == seen[src], f"from {src}: frame {i} came when {seen[src]} was due"
            assert f == frame(src, i), f"frame {i} from {src} is damaged"
            seen[src] += 1
        comm.Iprobe()  # (the MPI calls that keep RMA progressing)
    print(f"{N} frames from each of {size - 1} ranks, {NSLOTS} slots", flush=True)
else:
    deadline = time.monotonic() + 60
    for i in range(N):
        inbox.post(0, frame(rank, i))
    while not inbox.flush():
        assert time.monotonic() < deadline, "the ring never had room again"
        time.sleep(0.001)
comm.Barrier()
inbox.win.Unlock_all()
inbox.free()


class SlowToZero:
    """numpy, but the last rank is slow between making its window and zeroing it."""

    def __getattr__(self, name):
        return getattr(np, name)

    def frombuffer(self, *a, **k):
        time.sleep(0.5)
        return np.frombuffer(*a, **k)


# a frame posted at once after the (collective) creation reaches a rank that was slow to
# get its inbox ready (it once zeroed the frame away: a lost message, a hung request)
last = size - 1
inbox = Inbox(MPI, comm, SlowToZero() if rank == last else np)
inbox.win.Lock_all(MPI.MODE_NOCHECK)
if rank == 0:
    inbox.post(last, b"first")
    while not inbox.flush():
        time.sleep(0.001)
elif rank == last:
    deadline = time.monotonic() + 30
    got = []
    while not got and time.monotonic() < deadline:
        got = inbox.poll()
        comm.Iprobe()
    if got != [b"first"]:  # (the others wait in the barrier: end the job, loudly)
        print(f"FAILED: the first frame never came whole (got {got!r})", flush=True)
        comm.Abort(1)
comm.Barrier()
if rank == 0:
    print("OK inbox", flush=True)
inbox.win.Unlock_all()
inbox.free()
