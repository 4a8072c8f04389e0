"""Who a client is on the network: its address, seen through trusted proxies, and how many
connections each address holds.

Limits that work per client (failed logins, connections) need the client's address.
That is the TCP peer, unless the peer is one of ``trusted_proxies``: then it is the
address the proxy forwarded for (the last one in ``X-Forwarded-For`` that is not itself a
trusted proxy). A trusted proxy's own connections are not capped: it carries many clients.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Clients:
    def __init__(self, trusted_proxies: Sequence[Network], max_per_address: int | None) -> None:
        self.trusted_proxies = tuple(trusted_proxies)
        self.max_per_address = max_per_address  # None: no cap
        self.connections: dict[str, int] = {}  # open connections per peer address

    def is_trusted(self, address: str) -> bool:
        if not self.trusted_proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_proxies)

    def address(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address, given the TCP peer and the ``X-Forwarded-For`` header."""
        if not forwarded_for or not self.is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def connected(self, peer: str) -> bool:
        """Count a new connection from ``peer``; False (and not counted) when it is at the cap."""
        count = self.connections.get(peer, 0)
        if self.max_per_address is not None and count >= self.max_per_address and not self.is_trusted(peer):
            return False
        self.connections[peer] = count + 1
        return True

    def disconnected(self, peer: str) -> None:
        count = self.connections[peer] - 1
        if count:
            self.connections[peer] = count
        else:
            del self.connections[peer]
