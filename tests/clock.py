"""A clock that moves only when told to, for code that takes ``clock`` (seconds since the epoch)."""

from __future__ import annotations

import time


class Clock:
    def __init__(self, t: float | None = None) -> None:
        self.t = time.time() if t is None else t

    def __call__(self) -> float:
        return self.t
