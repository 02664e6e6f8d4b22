"""The time an invocation has left, as the sweep and repair watch it."""

from __future__ import annotations

from collections.abc import Callable

# Seconds the invocation has left (the Lambda context's clock); None: no deadline (a person's command line, tests).
TimeLeft = Callable[[], float] | None


def running_out(time_left: TimeLeft, reserve: float) -> bool:
    """Whether less than ``reserve`` seconds are left: the next step is not started."""
    return time_left is not None and time_left() < reserve
