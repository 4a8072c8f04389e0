"""Load clients in separate processes, each with its own asyncio loop, driven by the harness.

A ``Pool`` spawns N processes; each builds one *agent* (a class named ``"module:Class"``,
constructed from that worker's keyword arguments) and then runs the harness's calls on
it, one at a time: ``pool.call("method", ...)`` calls ``await agent.method(**kwargs)`` in
every worker at once and returns their answers in worker order. Between calls an
agent's background tasks (sockets reading frames) keep running. Every call has a
deadline; ``close`` ends the processes this pool started, by their pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import multiprocessing
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from .procstat import cpu_seconds
from .server import raise_file_limit

_context = multiprocessing.get_context("spawn")


class WorkerError(RuntimeError):
    pass


class Pool:
    def __init__(self, agent: str, configs: Sequence[dict[str, Any]], start_timeout: float = 60) -> None:
        self.agent = agent
        self.processes: list[BaseProcess] = []
        self.pipes: list[Connection] = []
        for number, config in enumerate(configs):
            mine, theirs = _context.Pipe()
            process = _context.Process(
                target=_main, args=(theirs, agent, config), name=f"bench-{number}", daemon=True
            )
            process.start()
            theirs.close()
            self.processes.append(process)
            self.pipes.append(mine)
        self._gather("started", start_timeout)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.pipes)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the worker processes have used so far."""
        return sum(cpu_seconds(p.pid) for p in self.processes if p.pid is not None)

    def call(
        self, method: str, timeout: float, each: Sequence[dict[str, Any]] | None = None, **kwargs: Any
    ) -> list[Any]:
        """``agent.method(**kwargs)`` in every worker (``each[i]`` adds worker i's own arguments)."""
        for i, pipe in enumerate(self.pipes):
            pipe.send((method, {**kwargs, **(each[i] if each else {})}))
        return self._gather(method, timeout)

    def _gather(self, what: str, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        answers: list[Any] = []
        for i, pipe in enumerate(self.pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                self.close()
                raise WorkerError(f"{self.agent} worker {i}: no answer to {what} within {timeout:.0f} s")
            try:
                status, value = pipe.recv()
            except EOFError:
                self.close()
                raise WorkerError(f"{self.agent} worker {i} died during {what}") from None
            if status != "ok":
                self.close()
                raise WorkerError(f"{self.agent} worker {i}, {what}:\n{value}")
            answers.append(value)
        return answers

    def close(self, timeout: float = 10) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(("__exit__", {}))
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)
        for pipe in self.pipes:
            pipe.close()
        self.processes.clear()
        self.pipes.clear()


def _main(pipe: Connection, agent: str, config: dict[str, Any]) -> None:
    raise_file_limit()
    try:
        import uvloop

        uvloop.run(_serve(pipe, agent, config))
    except ImportError:  # pragma: no cover - uvloop comes with sanic
        asyncio.run(_serve(pipe, agent, config))


async def _serve(pipe: Connection, agent_path: str, config: dict[str, Any]) -> None:
    module, _, name = agent_path.partition(":")
    try:
        agent = getattr(importlib.import_module(module), name)(**config)
    except Exception:
        pipe.send(("error", traceback.format_exc()))
        return
    pipe.send(("ok", None))
    while True:
        try:
            method, kwargs = await asyncio.to_thread(pipe.recv)
        except EOFError:
            method, kwargs = "__exit__", {}
        if method == "__exit__":
            with contextlib.suppress(Exception):
                await asyncio.wait_for(agent.close(), 10)
            return
        try:
            result = await getattr(agent, method)(**kwargs)
        except Exception:
            pipe.send(("error", traceback.format_exc()))
        else:
            pipe.send(("ok", result))
