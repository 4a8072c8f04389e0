"""Prometheus metrics of one instance, served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "kibitz_connections", "Open live connections, by kind", ["kind"], registry=self.registry
        )
        self.messages_accepted = Counter(
            "kibitz_messages_accepted",
            "Messages durably accepted from senders on this instance",
            registry=self.registry,
        )
        self.accept_latency = Histogram(
            "kibitz_accept_latency_seconds",
            "From a send's id to its durable acceptance (log and history)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events_delivered = Counter(
            "kibitz_events_delivered",
            "Events handed to live WebSocket connections on this instance",
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "kibitz_delivery_latency_seconds",
            "From an event's commit to its hand-over to a live connection",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.disk_free = Gauge(
            "kibitz_disk_free_bytes", "Free space on the data folder's file system", registry=self.registry
        )
        self.disk_low = Gauge(
            "kibitz_disk_low",
            "1 while free space is under disk_reserve and new messages are refused",
            registry=self.registry,
        )
        self.plugin_failures = Counter(
            "kibitz_plugin_failures",
            "Extension hook calls that raised or ran over their time budget, by plugin, hook and reason",
            ["plugin", "hook", "reason"],
            registry=self.registry,
        )
        for kind in ("websocket", "longpoll"):
            self.connections.labels(kind)

    def accepted(self, seconds: float) -> None:
        self.messages_accepted.inc()
        self.accept_latency.observe(seconds)

    def delivered(self, connections: int, seconds: float) -> None:
        self.events_delivered.inc(connections)
        self.delivery_latency.observe(max(seconds, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
