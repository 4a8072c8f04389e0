"""The operator's endpoints, discovery, the OpenAPI document, and error rendering.

``/healthz`` answers while the process runs; ``/readyz`` asks every backing service and
names the first that does not answer; ``/metrics`` is Prometheus text. Every error,
including Sanic's own (unknown path, wrong method, body too large), is rendered with the
protocol's body ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import orjson
import sqlalchemy as sa
from sanic import DefaultSanic, Request
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, raw

from .api import PREFIX, json
from .errors import ApiError
from .openapi import openapi_document
from .registry import Registry

if TYPE_CHECKING:
    from .app import Kibitz

log = logging.getLogger("kibitz.http")

CHECK_TIMEOUT = 3.0
SANIC_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "invalid_request",
    413: "payload_too_large",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(status: int, code: str, message: str, retry_after: int | None = None) -> HTTPResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return raw(body, status=status, content_type="application/json", headers=headers)


def logged_path(request: Request) -> str:
    """The request's path for a log line: a route parameter named ``secret`` shows as ``***``."""
    secret = request.match_info.get("secret")
    return request.path.replace(secret, "***") if secret else request.path


async def handle_error(request: Request, exception: Exception) -> HTTPResponse:
    if isinstance(exception, ApiError):
        return error_response(exception.status, exception.code, exception.message, exception.retry_after)
    if isinstance(exception, SanicException):
        status = exception.status_code
        code = SANIC_CODES.get(status, "invalid_request" if status < 500 else "unavailable")
        return error_response(status, code, str(exception) or code.replace("_", " "))
    if isinstance(exception, ConnectionError | TimeoutError):
        log.warning("backing_service_failed", extra={"path": logged_path(request), "error": str(exception)})
        return error_response(503, "unavailable", "a backing service did not answer; retry shortly", 1)
    log.exception("request_failed", extra={"path": logged_path(request), "method": request.method})
    return error_response(500, "internal_error", "the server failed to answer; this has been logged")


async def readiness_problem(app: Kibitz) -> str | None:
    """The name of the first backing service that does not answer, or None when all do."""
    if not app.ready:
        return "kibitz (starting or stopping)"

    async def database() -> None:
        async with app.engine.connect() as db:
            await db.execute(sa.text("SELECT 1"))

    checks = [
        ("database", database),
        (f"transport {app.settings.transport}", app.transport.check),
        (f"storage {app.settings.storage}", app.storage.check),
    ]
    for name, check in checks:
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT)
        except Exception as e:
            return f"{name}: {type(e).__name__}: {e}".rstrip(": ")
    return None


def register(sanic: DefaultSanic, app: Kibitz) -> None:
    sanic.error_handler.add(Exception, handle_error)

    async def healthz(request: Request) -> HTTPResponse:
        return json({"status": "ok"})

    async def readyz(request: Request) -> HTTPResponse:
        problem = await readiness_problem(app)
        if problem:
            return error_response(503, "unavailable", f"not ready: {problem}")
        # A nearly full disk is reported, not made a failure: the instance still serves
        # reads, and a health check that restarts it would not free any space.
        full = app.disk.problem()
        warnings = [full] if full else []
        return json({"status": "ready", "disk_free_bytes": app.disk.free, "warnings": warnings})

    async def metrics(request: Request) -> HTTPResponse:
        return raw(app.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    async def discovery(request: Request) -> HTTPResponse:
        servers = await app.registry.live()
        best = Registry.recommend(servers, app.instance_id)
        return json(
            {
                "servers": [server.to_dict() for server in servers],
                "recommended": best.url,
                "registration": app.settings.registration,
            }
        )

    async def openapi(request: Request) -> HTTPResponse:
        return json(openapi_document(app.openapi_paths))  # plugins' routes are registered after this

    sanic.add_route(healthz, "/healthz", methods=["GET"], name="healthz")
    sanic.add_route(readyz, "/readyz", methods=["GET"], name="readyz")
    sanic.add_route(metrics, "/metrics", methods=["GET"], name="metrics")
    sanic.add_route(discovery, PREFIX + "/discovery", methods=["GET"], name="discovery")
    sanic.add_route(openapi, PREFIX + "/openapi.json", methods=["GET"], name="openapi")
