"""Optional sampling profile of the server (``--profile``): ``py-spy record`` of the Kibitz
process during a phase, saved as collapsed stacks and summarised as the functions
holding the most busy samples, on their own (self) and with what they call (total).

``--profile`` (``python``) samples Python frames without stopping the process, which
costs the server little; time inside C code (uvloop's loop, orjson, sockets) counts to
the Python function that called it, and the loop's own work to ``_run_server_forever``.
``--profile native`` adds the C frames, but py-spy must then pause the process at every
sample, which halves the server's throughput: use it for where the time goes, not for
the figures."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PY_SPY = str(Path(sys.executable).parent / "py-spy")
RATE = 100  # samples per second
TOP = 15
# A sample whose stack holds one of these is a thread waiting, not working.
WAITING = ("PyThread_acquire_lock_timed", "epoll_pwait", "epoll_wait", "select (", "poll (")
COMMON = 0.9  # frames in this share of the busy samples rank no "total" (nor do the ROOT ones)
# The chain every sample of the main thread passes through: start-up down to the event loop.
ROOT = (
    "<module> (kibitz)", "main (core/cli.py)", "serve (core/cli.py)", "StartupMixin.", "worker_serve (",
    "_serve_http_1 (", "_run_server_forever (", "run_forever (", "Loop__", "uv_run (", "uv__run",
    "uv__io_poll", "task_step", "TaskStepMethWrapper_call", "Py_DECREF", "__Pyx_PyObject_FastCallDict",
    "Handle__run", "loop_cb_", "0x",
)  # fmt: skip


@contextlib.contextmanager
def record(
    pid: int, out: Path, name: str, seconds: float, mode: str | None, into: dict[str, Any]
) -> Iterator[None]:
    """Profile ``pid`` for up to ``seconds`` while the block runs; put a summary in ``into["profile"]``."""
    binary = PY_SPY if Path(PY_SPY).exists() else shutil.which("py-spy")
    if not mode or binary is None:
        yield
        return
    raw = out / f"profile-{name}.txt"
    raw.unlink(missing_ok=True)
    duration = max(1, int(seconds))
    argv = [binary, "record", "--pid", str(pid), "--duration", str(duration), "--rate", str(RATE)]
    argv += ["--format", "raw", "--output", str(raw)]
    argv += ["--native"] if mode == "native" else ["--nonblocking"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        try:
            _, err = process.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        if raw.exists():
            into["profile"] = {
                "file": raw.name,
                "mode": mode,
                "seconds": duration,
                **summarise(raw, duration),
            }
        else:
            into["profile"] = {"error": err.decode(errors="replace")[-500:]}


def summarise(raw: Path, seconds: float) -> dict[str, Any]:
    """Top functions by self and by total busy samples, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    busy = 0
    main_busy = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        if any(frame.startswith(WAITING) for frame in frames):
            continue
        busy += count
        if any(frame.startswith("_run_server_forever ") for frame in frames):
            main_busy += count
        own[frames[-1]] += count
        for frame in set(frames):
            if not frame.startswith(ROOT):
                total[frame] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        ranked = [(f, n) for f, n in counter.most_common() if n < COMMON * busy][:TOP]
        return [{"function": f, "percent": round(100 * n / max(1, busy), 1)} for f, n in ranked]

    return {
        "busy_samples": busy,
        "event_loop_busy_percent": round(100 * main_busy / (seconds * RATE), 1),
        "self": share(own),
        "total": share(total),
    }


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` as ``func (to/module.py)``."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})" if where else name
