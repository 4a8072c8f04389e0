"""The Kibitz under test: a real ``kibitz serve`` child process on a free loopback port.

Embedded NATS and Redis (unless ``settings`` name others, as bench/deployment.py's do), a fresh
data folder, rate limits off, warnings only in its log. Started in its own process
group, so stopping it (SIGTERM, then SIGKILL of the group after a deadline) leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from kibitz.supervisor import free_port

from .procstat import TreeUsage, command_line, tree

KIBITZ = str(Path(sys.executable).parent / "kibitz")
WANTED_FILES = 65536


def raise_file_limit(wanted: int = WANTED_FILES) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (the hard limit too, when root); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class KibitzServer:
    """One ``kibitz serve`` on ``data_dir``; ``start`` may be called again after ``stop``."""

    def __init__(self, data_dir: Path, log_dir: Path, settings: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.settings = settings or {}  # KIBITZ_* beyond the defaults below, e.g. external services
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = log_dir / "kibitz.log"
        self.starts = 0

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/ws"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KIBITZ_")}
        env.update(
            KIBITZ_HOST="127.0.0.1",
            KIBITZ_PORT=str(self.port),
            KIBITZ_DATA_DIR=str(self.data_dir),
            KIBITZ_PUBLIC_URL=self.url,
            KIBITZ_REGISTRATION="open",
            KIBITZ_RATE_LIMITS="off",
            KIBITZ_LOG_LEVEL="WARNING",
        )
        env.update(self.settings)
        return env

    def start(self, timeout: float = 120) -> float:
        """Start and wait for ``/readyz`` 200; return the seconds from spawn to ready."""
        raise_file_limit()  # inherited by the server and its NATS and Redis
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self.env()
        self.starts += 1
        with open(self.log_path, "wb" if self.starts == 1 else "ab") as out:  # one run's log
            out.write(f"--- start {self.starts} ---\n".encode())
            out.flush()
            began = time.perf_counter()
            self.process = subprocess.Popen(
                [KIBITZ, "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = began + timeout
        with httpx.Client(timeout=2) as http:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"kibitz exited with {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(self.url + "/readyz").status_code == 200:
                        return time.perf_counter() - began
                if time.perf_counter() > deadline:
                    self.stop()
                    raise RuntimeError(f"kibitz not ready within {timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(0.01)

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM, wait up to ``timeout``, then SIGKILL the process group; return seconds taken."""
        process = self.process
        if process is None:
            return 0.0
        began = time.perf_counter()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # anything left in its group, NATS and Redis included
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        self.process = None
        return time.perf_counter() - began

    def usage(self) -> TreeUsage:
        return TreeUsage.of(self.pid)

    def redis_port(self) -> int:
        """The port of the embedded redis-server (it writes ``host:port`` into its command line)."""
        for pid in tree(self.pid)[1:]:
            argv = command_line(pid)
            if not argv or Path(argv[0].split()[0]).name != "redis-server":
                continue
            if "--port" in argv:
                return int(argv[argv.index("--port") + 1])
            found = re.search(r":(\d+)", " ".join(argv))
            if found:
                return int(found.group(1))
        raise RuntimeError(f"no embedded redis-server under kibitz pid {self.pid}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
