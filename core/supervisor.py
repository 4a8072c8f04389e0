"""Supervised child processes: the embedded nats-server and redis-server.

A ``ChildProcess`` starts a server binary, waits until it accepts connections, restarts
it when it dies (with a growing pause), and stops it with SIGTERM, then SIGKILL. Each
child runs in a session of its own, so a terminal's Ctrl-C (SIGINT to the whole
foreground group) reaches Kibitz alone, which then stops its children in order. On
Linux the child is also told to die with its parent, so a SIGKILLed Kibitz leaves no
server behind holding the data folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("kibitz.supervisor")

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
MAX_RESTART_PAUSE = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def find_binary(name: str, *fallbacks: str) -> str:
    """The path of a server binary installed by a Python dependency (or on PATH)."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for candidate_path in (*fallbacks, shutil.which(name)):
        if candidate_path and Path(candidate_path).is_file():
            return str(candidate_path)
    raise FileNotFoundError(f"{name} not found; is the package that ships it installed?")


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")  # handed to the child process; the caller closes it


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL us when the parent dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _keep_descriptors_from_children() -> None:
    """Mark this process's open descriptors close-on-exec.

    uvloop's subprocess support does not close inherited descriptors, and the HTTP
    server's listening socket is inheritable: a server binary must not hold it.
    """
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2:
                with contextlib.suppress(OSError):
                    os.set_inheritable(fd, False)


class ChildProcess:
    """One supervised server process, ready when ``port`` on 127.0.0.1 accepts connections."""

    def __init__(self, name: str, argv: Sequence[str], port: int, log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_path = log_path
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        """Start the process and return once it accepts connections; supervise it from then on."""
        await self._spawn()
        self._watcher = asyncio.create_task(self._watch(), name=f"supervise-{self.name}")

    async def _spawn(self) -> None:
        _keep_descriptors_from_children()
        out = await asyncio.to_thread(_open_log, self.log_path)
        with out:
            self._process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        await self._wait_ready()
        log.info("child_started", extra={"child": self.name, "pid": self._process.pid, "port": self.port})

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        assert self._process is not None
        while True:
            if self._process.returncode is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}; see {self.log_path}")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1.0)
                writer.close()
                return
            except (OSError, TimeoutError):
                if loop.time() > deadline:
                    raise RuntimeError(
                        f"{self.name} did not listen on port {self.port}; see {self.log_path}"
                    ) from None
                await asyncio.sleep(0.02)

    async def _watch(self) -> None:
        pause = 0.1
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            log.error("child_died", extra={"child": self.name, "returncode": code})
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_RESTART_PAUSE)
            try:
                await self._spawn()
                self.restarts += 1
                pause = 0.1
            except Exception:
                log.exception("child_restart_failed", extra={"child": self.name})

    async def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL; no restart after this."""
        self._stopping = True
        if self._watcher:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.info("child_stopped", extra={"child": self.name})

    def kill(self) -> None:
        """SIGKILL the process now (tests use this to simulate a crash); it is restarted."""
        if self._process and self._process.returncode is None:
            self._process.kill()
