"""Scenario 7, start-up.

Cold: from spawning ``kibitz serve`` on a fresh, empty data folder (the embedded NATS and
Redis are created and started too) to ``/readyz`` answering 200; the harness's own
first start is one of these, the others use throwaway folders. Restart: the server
under test is stopped (SIGTERM) and started again on the folder the other scenarios
filled; Redis loads its append-only file and storage catches up with the log before
``/readyz`` says 200.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from ..context import Context
from ..server import KibitzServer


def _folder_mb(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return round(total / 2**20, 1)


def run_scenario(ctx: Context) -> dict[str, Any]:
    cold = [ctx.shared["first_start_s"]] if "first_start_s" in ctx.shared else []
    while len(cold) < ctx.sizes.cold_starts:
        folder = Path(tempfile.mkdtemp(prefix="kibitz-bench-cold-"))
        try:
            server = KibitzServer(folder / "data", folder / "logs")
            try:
                cold.append(server.start())
            finally:
                server.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    server = ctx.server
    size_mb = _folder_mb(server.data_dir)
    stop_s = server.stop()
    restart_s = server.start()
    print(
        f"  cold start to ready: {', '.join(f'{c:.2f}' for c in cold)} s;"
        f" stop {stop_s:.2f} s; restart on the full folder ({size_mb} MB) {restart_s:.2f} s",
        flush=True,
    )
    return {
        "cold_start_s": [round(c, 3) for c in cold],
        "cold_start_median_s": round(statistics.median(cold), 3),
        "full_folder_mb": size_mb,
        "stop_s": round(stop_s, 3),
        "restart_full_s": round(restart_s, 3),
    }
