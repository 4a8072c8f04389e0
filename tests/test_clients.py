"""The client's address through trusted proxies, and the cap on connections per address."""

from __future__ import annotations

from kibitz.clients import Clients
from kibitz.settings import load_settings


def clients(max_per_address: int | None = 2) -> Clients:
    settings = load_settings(environ={"KIBITZ_TRUSTED_PROXIES": "10.0.0.5, fd00::/8"})
    return Clients(settings.trusted_proxies, max_per_address)


def test_the_address_is_the_peer_unless_the_peer_is_a_trusted_proxy() -> None:
    c = clients()
    assert c.address("203.0.113.9", None) == "203.0.113.9"
    assert c.address("203.0.113.9", "198.51.100.1") == "203.0.113.9"  # anyone may send the header
    assert c.address("10.0.0.5", "198.51.100.1") == "198.51.100.1"
    # The last hop not itself a trusted proxy: what a client wrote in front cannot spoof it.
    assert c.address("10.0.0.5", "1.2.3.4, 198.51.100.1, fd00::7") == "198.51.100.1"
    assert c.address("10.0.0.5", "fd00::7") == "fd00::7"  # only proxies: the first one
    assert c.address("10.0.0.5", None) == "10.0.0.5"


def test_connections_are_capped_per_address_but_not_for_trusted_proxies() -> None:
    c = clients()
    assert c.connected("203.0.113.9") and c.connected("203.0.113.9")
    assert not c.connected("203.0.113.9")  # the third
    assert c.connected("198.51.100.1")  # another address has its own count
    c.disconnected("203.0.113.9")
    assert c.connected("203.0.113.9")
    assert all(c.connected("10.0.0.5") for _ in range(5))
    assert all(clients(None).connected("203.0.113.9") for _ in range(5))  # limits off
