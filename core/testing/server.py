"""A real Kibitz server inside the test's own process and event loop.

``async with running_server(tmp_path, {"KIBITZ_PLUGINS": "mine"}) as server:`` builds
the application as ``kibitz serve`` does (``create_app``, the configured plugins found through their entry
points) and serves it on a free loopback port over real HTTP and WebSocket, on the
memory transport and storage unless the settings say otherwise: it starts in a fraction
of a second and needs no other process. It drains and stops as ``kibitz serve`` does.
A bad setting raises ``ConfigError`` from the ``async with``, as ``kibitz serve`` would
stop with it (``KIBITZ_CONFIG`` in ``environ`` names a TOML file to read).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ..app import Kibitz, create_app
from ..http_protocol import KibitzProtocol
from ..logs import JsonFormatter
from ..settings import load_settings
from ..supervisor import free_port
from .client import BaseUrl

# The fast tier's defaults: nothing but this process, and no limits that tests would hit.
DEFAULTS = {"KIBITZ_TRANSPORT": "memory", "KIBITZ_STORAGE": "memory", "KIBITZ_RATE_LIMITS": "off"}


class LogCapture(logging.Handler):
    """The lines Kibitz logs while the server runs, formatted as ``kibitz serve`` writes them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclasses.dataclass(frozen=True)
class InProcessServer(BaseUrl):
    """A running server: its URLs, data folder, services (``kibitz.App``) and log."""

    url: str
    data_dir: Path
    app: Kibitz
    capture: LogCapture

    def log(self) -> str:
        """What was logged so far (by anything in this process, at INFO and above)."""
        return "\n".join(self.capture.lines)


@asynccontextmanager
async def running_server(
    folder: Path, environ: Mapping[str, str] | None = None, plugins: Iterable[object] = ()
) -> AsyncIterator[InProcessServer]:
    """Serve Kibitz configured by ``environ`` (``KIBITZ_*`` variables over ``DEFAULTS``, the
    data folder in ``folder``) with ``plugins`` (plugin objects) registered besides."""
    port = free_port()
    env = {**DEFAULTS, "KIBITZ_DATA_DIR": str(folder / "data"), **(environ or {})}
    env |= {"KIBITZ_HOST": "127.0.0.1", "KIBITZ_PORT": str(port)}
    settings = load_settings(environ=env)
    sanic = create_app(settings, plugins)
    # Sanic's touch-up rewrites its protocol class's methods from their source once per
    # process; a second server in the same process would find them rewritten already.
    sanic.config.TOUCHUP = False
    server: Any = await sanic.create_server(
        host="127.0.0.1",
        port=port,
        protocol=KibitzProtocol,
        return_asyncio_server=True,
        access_log=False,
    )
    capture, root = LogCapture(), logging.getLogger()
    level, root.level = root.level, min(root.level, logging.INFO)
    root.addHandler(capture)
    try:
        await server.startup()
        await server.before_start()
        await server.after_start()
        try:
            yield InProcessServer(f"http://127.0.0.1:{port}", settings.data_dir, sanic.ctx.app, capture)
        finally:
            await server.before_stop()
            server.close()
            await server.wait_closed()
            await server.after_stop()
    finally:
        root.removeHandler(capture)
        root.setLevel(level)
