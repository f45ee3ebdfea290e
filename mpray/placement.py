"""What the node's scheduler and the owners share about where work should run.

A function's mean run time (``running_mean``) decides whether its tasks are worth moving
to another rank (``SPILL_MIN_TASK_S``): the node places them there, and an owner sends
such tasks the node's way instead of to its leases.
"""

from __future__ import annotations

SPILL_MIN_TASK_S = 0.002  # moving a task to another rank costs about this much


def running_mean(n: int, mean: float, x: float, weight: float) -> float:
    """Mean task time after its ``n``-th sample ``x``: a plain mean of the first samples
    (one slow start does not decide), then a moving mean with ``x`` weighted ``weight``."""
    return mean + max(1.0 / n, weight) * (x - mean)
