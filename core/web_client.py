"""The web client: the files of ``kibitz.web`` (in the wheel: no Node, no build), served at ``/``.

- ``/`` answers ``index.html`` for every page of the client, never cached, so a new
  release is picked up at the next load. Its asset URLs carry the release's version
  (a hash of every file's contents): ``/web/<version>/app.js``. Those are cached for a
  year as immutable, so a second load fetches nothing but the page itself.
- ``/sw.js``, the service worker, sits at the root so that its scope is the whole site;
  browsers check it for updates themselves, so it is not cached either.
- Every file is read once at start-up, with a gzip copy for browsers that take it.
- Every answer carries a strict Content-Security-Policy: scripts, styles and
  connections from this origin only (the page's also allows WebSockets to the other
  live instances, see ``kibitz.registry``), no inline script or style, no frames.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sanic import DefaultSanic, Request
from sanic.response import HTTPResponse, raw

from .errors import NotFound

if TYPE_CHECKING:
    from .registry import Registry

VERSION_PLACEHOLDER = "{{version}}"
SUFFIXES = (".html", ".js", ".css", ".svg", ".webmanifest", ".png")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'{sockets}; manifest-src 'self'; worker-src 'self'; font-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]+)?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?")
SECURITY_HEADERS = {
    "content-security-policy": CSP.format(sockets=""),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
FOREVER = "public, max-age=31536000, immutable"
NEVER = "no-cache"


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    content_type: str


def _content_type(name: str) -> str:
    if name.endswith(".webmanifest"):
        return "application/manifest+json"
    if name.endswith(".js"):
        return "text/javascript; charset=utf-8"
    guessed = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return f"{guessed}; charset=utf-8" if guessed.startswith("text/") or guessed.endswith("+xml") else guessed


def load_assets() -> tuple[str, dict[str, Asset]]:
    """Every file of the web client by its path, and the release version they make."""
    contents: dict[str, bytes] = {}
    pending = [(files("kibitz.web"), "")]
    while pending:
        folder, prefix = pending.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                pending.append((entry, f"{prefix}{entry.name}/"))
            elif entry.name.endswith(SUFFIXES):
                contents[prefix + entry.name] = entry.read_bytes()
    digest = hashlib.sha256()
    for path in sorted(contents):
        digest.update(path.encode() + b"\0" + contents[path])
    version = digest.hexdigest()[:12]
    assets = {}
    for path, body in contents.items():
        if path in ("index.html", "sw.js"):
            body = body.replace(VERSION_PLACEHOLDER.encode(), version.encode())
        assets[path] = Asset(body, gzip.compress(body, 9, mtime=0), _content_type(path))
    return version, assets


def socket_sources(urls: Iterable[str]) -> str:
    """The WebSocket origins of instances' public URLs, for the page's connect-src: the
    client opens its WebSocket on the instance discovery recommends (``ws://a:8000`` for
    ``http://a:8000``). A URL whose host is not plain is left out, never quoted into the policy."""
    origins = set()
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and HOST.fullmatch(parts.netloc):
            origins.add(f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}")
    return "".join(f" {origin}" for origin in sorted(origins))


def register(sanic: DefaultSanic, registry: Registry) -> None:
    version, assets = load_assets()

    def answer(request: Request, path: str, cache: str, sockets: str = "") -> HTTPResponse:
        asset = assets.get(path)
        if asset is None:
            raise NotFound("no such file")
        headers = {**SECURITY_HEADERS, "cache-control": cache, "vary": "accept-encoding"}
        if sockets:
            headers["content-security-policy"] = CSP.format(sockets=sockets)
        body = asset.body
        if "gzip" in request.headers.get("accept-encoding", ""):
            body = asset.gzipped
            headers["content-encoding"] = "gzip"
        return raw(body, content_type=asset.content_type, headers=headers)

    async def page(request: Request) -> HTTPResponse:
        others = [i.url for i in await registry.live() if i.id != registry.me]
        return answer(request, "index.html", NEVER, socket_sources(others))

    async def service_worker(request: Request) -> HTTPResponse:
        return answer(request, "sw.js", NEVER)

    async def asset(request: Request, release: str, path: str) -> HTTPResponse:
        if release != version:
            raise NotFound("not a file of this release")  # a page of an older release: reload
        return answer(request, path, FOREVER)

    sanic.add_route(page, "/", methods=["GET"], name="web_page")
    sanic.add_route(service_worker, "/sw.js", methods=["GET"], name="web_service_worker")
    sanic.add_route(asset, "/web/<release>/<path:path>", methods=["GET"], name="web_asset")
