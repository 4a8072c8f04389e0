"""How far long work has come, shown to the person who started it.

On a terminal: a tqdm bar per part, on standard error. Otherwise (a log, a pipe, cron):
a plain line per part at each tenth, which reads well in a file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Never

from tqdm import tqdm

# (part, done, total): how far a long step has come.
Progress = Callable[[str, int, int], None]


class ProgressDisplay:
    """A ``Progress`` callback for the command line (backup, restore, export, storage rebuild)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.terminal = sys.stderr.isatty()
        self._part = ""
        self._bar: tqdm[Never] | None = None  # a bar updated by hand, over no iterable
        self._tenths = -1

    def __call__(self, part: str, done: int, total: int) -> None:
        if part != self._part:
            self.close()
            self._part, self._tenths = part, -1
            if self.terminal:
                self._bar = tqdm(total=total, desc=f"{self.what}: {part}", unit=" records", file=sys.stderr)
        if self._bar is not None:
            self._bar.total = max(total, done)
            self._bar.update(done - self._bar.n)
            return
        tenths = done * 10 // total if total else 10
        if tenths > self._tenths:
            self._tenths = tenths
            print(f"{self.what}: {part} {done}/{total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
