"""What every scenario gets: the server under test, the sizes, the users signed up for the
run, and a place for notes that go into the output."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .api import Device
from .config import Sizes
from .server import KibitzServer

T = TypeVar("T")


@dataclass
class Context:
    server: KibitzServer
    sizes: Sizes
    out: Path
    users: list[Device] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: str | None = None  # None, "python" or "native" (see bench/profiler.py)
    shared: dict[str, Any] = field(default_factory=dict)  # what one scenario leaves for a later one

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


def run(coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run harness-side async work on a fresh loop, within ``timeout`` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


def split(items: list[T], parts: int) -> list[list[T]]:
    """``items`` dealt round-robin into ``parts`` lists."""
    return [items[i::parts] for i in range(parts)]
