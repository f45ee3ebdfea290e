"""First-fit allocator over one arena's byte range: pure bookkeeping, no memory touched.

First fit by address keeps reusing the low, already-faulted part of the arena: writing
into pages that were touched before runs at memcpy speed, while fresh tmpfs pages fault
in at a fraction of it (docs/facts.md).  Free ranges are coalesced with their neighbours.
"""

from __future__ import annotations

import bisect

ALIGN = 64  # numpy-friendly and cache-line sized


def align_up(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) & ~(a - 1)


class ArenaFull(Exception):
    """No free range is large enough."""


class Allocator:
    def __init__(self, size: int) -> None:
        self.size = size - size % ALIGN
        self._starts: list[int] = [0]  # sorted starts of free ranges
        self._sizes: dict[int, int] = {0: self.size} if self.size else {}
        if not self.size:
            self._starts = []
        self.used = 0
        self.high_water = 0  # highest end ever handed out: below it pages are warm
        self._live: dict[int, int] = {}

    def alloc(self, nbytes: int) -> int:
        """Return the offset of a free range of ``nbytes`` (rounded up), or raise."""
        need = align_up(max(nbytes, 1))
        sizes = self._sizes
        for i, start in enumerate(self._starts):
            have = sizes[start]
            if have >= need:
                del sizes[start]
                if have > need:
                    self._starts[i] = start + need
                    sizes[start + need] = have - need
                else:
                    del self._starts[i]
                self._live[start] = need
                self.used += need
                if start + need > self.high_water:
                    self.high_water = start + need
                return start
        raise ArenaFull(
            f"no free range of {need} bytes (arena {self.size} bytes, {self.used} in use, "
            f"largest free range {self.largest_free()} bytes)"
        )

    def free(self, offset: int) -> int:
        """Release the range starting at ``offset``; returns its size."""
        released = size = self._live.pop(offset)
        self.used -= size
        starts, sizes = self._starts, self._sizes
        i = bisect.bisect_left(starts, offset)
        # merge with the following free range
        if i < len(starts) and starts[i] == offset + size:
            size += sizes.pop(starts[i])
            del starts[i]
        # merge with the preceding free range
        if i > 0 and starts[i - 1] + sizes[starts[i - 1]] == offset:
            sizes[starts[i - 1]] += size
        else:
            starts.insert(i, offset)
            sizes[offset] = size
        return released

    def largest_free(self) -> int:
        return max(self._sizes.values(), default=0)

    def live_ranges(self) -> dict[int, int]:
        return dict(self._live)
