"""Retry policy: capped exponential backoff with full jitter, shared by every sink.

A sink never sleeps or counts attempts itself; it only classifies its errors (see ``errors.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Backoff:
    """``compute(failures)`` is the delay before the next attempt after that many failures in a row.

    Jitter (a uniform draw in the upper half of the capped exponential step) keeps many switches
    that lost the same database from reconnecting in lockstep when it comes back.
    """

    base_s: float = 0.05
    cap_s: float = 5.0
    random: Callable[[], float] = random.random

    def compute(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        ceiling = min(self.cap_s, self.base_s * (2 ** min(failures - 1, 30)))
        return ceiling / 2 + (ceiling / 2) * self.random()
