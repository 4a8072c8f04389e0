"""Requests to URLs that someone else chose (push endpoints, webhooks), kept out of the
operator's own network: the guard against server-side request forgery.

Such a URL must be ``https://`` and lead to public addresses only: never loopback,
private, link-local, unique-local or another special range (``is_public_address``).
``check_url`` says so when the URL is given (so a bad one is refused with 400 and never
stored); ``Outbound`` checks again for every request, on the address it really connects
to: its resolver drops every address that is not public, so a DNS answer that changed
since cannot lead inside. Redirects are never followed. With ``allow_insecure``
(``KIBITZ_PUSH_ALLOW_INSECURE=1``, for tests and labs) ``http://`` and any address are
allowed.

``retryable`` and ``retry_pause`` are the policy for trying such a request again: after
429, 5xx or no answer, waiting what ``Retry-After`` asks or a doubling pause.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import socket
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .errors import InvalidRequest, Unavailable

RESOLVE_TIMEOUT = 5.0
MAX_ANSWER_BYTES = 64 * 1024  # of an answer's body read, at most
FIRST_PAUSE = 1.0  # seconds before the second try, doubled before each one after it
MAX_PAUSE = 60.0  # seconds at most between two tries, whatever Retry-After says
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(address: str) -> bool:
    """Whether Kibitz may connect to this IP address on someone else's say-so.

    IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4) are judged by that address.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
    return ip.is_global and not ip.is_multicast


def _host(url: str, allow_insecure: bool) -> str:
    """The URL's host, once its form is allowed; else ValueError saying why."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  # raises for a port that is not a number
    except ValueError:
        raise ValueError("not a URL") from None
    if parts.scheme != "https" and not (allow_insecure and parts.scheme == "http"):
        raise ValueError("must be an https:// URL")
    if not host or parts.username is not None or parts.password is not None:
        raise ValueError("must name a host, and no user or password")
    return host


async def check_url(url: str, field: str, allow_insecure: bool) -> None:
    """400 unless ``url`` may be requested (see the module docstring); 503 if DNS is down."""
    try:
        host = _host(url, allow_insecure)
    except ValueError as e:
        raise InvalidRequest(f"{field}: {e}") from None
    if allow_insecure:
        return
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            found = await loop.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise Unavailable(f"{field}: its host could not be looked up now; retry", retry_after=5) from None
    except socket.gaierror as e:
        if e.errno == socket.EAI_AGAIN:
            raise Unavailable(f"{field}: its host could not be looked up now; retry", retry_after=5) from None
        raise InvalidRequest(f"{field}: its host does not resolve") from None
    if not found or not all(is_public_address(str(info[4][0])) for info in found):
        raise InvalidRequest(f"{field}: its host must be on a public address")


class _PublicOnly(AbstractResolver):
    """A resolver that answers only the public addresses of a host (none: an OSError)."""

    def __init__(self) -> None:
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = [r for r in await self._resolver.resolve(host, port, family) if is_public_address(r["host"])]
        if not found:
            raise OSError(f"{host} has no public address")
        return found

    async def close(self) -> None:
        await self._resolver.close()


class Outbound:
    """POSTs to URLs that someone else chose, within the guard; one pooled session."""

    def __init__(self, allow_insecure: bool, timeout: float = 15.0, connections: int = 64) -> None:
        self.allow_insecure = allow_insecure
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, data: bytes, headers: Mapping[str, str]) -> tuple[int, Mapping[str, str]]:
        """The status and headers of the answer (its body is dropped).

        Raises ``ValueError`` for a URL outside the guard (trying again will not help),
        and what aiohttp raises for a connection that fails (``aiohttp.ClientError``,
        ``OSError``) or times out (``TimeoutError``).
        """
        status, answer, _ = await self.post_read(url, data, headers)
        return status, answer

    async def post_read(
        self, url: str, data: bytes, headers: Mapping[str, str], limit: int = MAX_ANSWER_BYTES
    ) -> tuple[int, Mapping[str, str], bytes | None]:
        """As ``post``, and the answer's body: None when it is longer than ``limit`` bytes
        (no more than that is read). Added in 0.2."""
        host = _host(url, self.allow_insecure)
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None  # a name: the resolver keeps to its public addresses
        if literal is not None and not self.allow_insecure and not is_public_address(host):
            raise ValueError(f"{host} is not a public address")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.connections, resolver=None if self.allow_insecure else _PublicOnly()
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        async with self._session.post(url, data=data, headers=headers, allow_redirects=False) as response:
            body = b""
            while len(body) <= limit and (chunk := await response.content.read(limit + 1 - len(body))):
                body += chunk
            return response.status, response.headers, body if len(body) <= limit else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def retryable(status: int) -> bool:
    """Whether a request answered ``status`` may succeed if tried again: 429, 5xx, or 0 for
    no answer at all (the connection failed or timed out)."""
    return status == 0 or status == 429 or status >= 500


def retry_pause(attempt: int, headers: Mapping[str, str]) -> float:
    """Seconds to wait after try number ``attempt`` (1 for the first) failed: what the
    answer's ``Retry-After`` asks, else ``FIRST_PAUSE`` doubled with each try; at most
    ``MAX_PAUSE``."""
    doubled = FIRST_PAUSE * 2 ** min(attempt - 1, 16)  # a bound on the power, far past MAX_PAUSE
    return min(_retry_after(headers) or doubled, MAX_PAUSE)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a ``Retry-After`` header (a number or an HTTP date), if there is one."""
    value = headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
