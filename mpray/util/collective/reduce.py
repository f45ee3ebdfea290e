"""Element-wise reduction of several arrays into one, a cache-sized block at a time: each
block of the output stays in cache while the inputs stream past, so the memory traffic is
one read of each input and one write of the output, as in a fused loop, with numpy's own
vectorised kernels."""

from __future__ import annotations

import numpy as np

from .types import ReduceOp

UFUNCS = {ReduceOp.SUM: np.add, ReduceOp.PRODUCT: np.multiply,
          ReduceOp.MIN: np.minimum, ReduceOp.MAX: np.maximum}
BLOCK = 128 << 10  # bytes of output per block: inside L2 beside the inputs' lines


def reduce_into(out: np.ndarray, ins: list, op: ReduceOp) -> None:
    """``out = ins[0] (op) ins[1] (op) ...``; ``out`` may be one of ``ins``."""
    f = UFUNCS[ReduceOp(op)]
    if len(ins) == 1:
        if ins[0] is not out:
            np.copyto(out, ins[0])
        return
    step = max(1, BLOCK // max(1, out.itemsize))
    for lo in range(0, out.size, step):
        o = out[lo:lo + step]
        f(ins[0][lo:lo + step], ins[1][lo:lo + step], out=o)
        for x in ins[2:]:
            f(o, x[lo:lo + step], out=o)
