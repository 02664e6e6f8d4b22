"""A simulated clock, in seconds, that the simulated queue advances and the agents read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Clock:
    now: float = 0.0
