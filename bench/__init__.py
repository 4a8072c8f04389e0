"""Kibitz's benchmark suite: ``python -m bench [--quick] [--only SCENARIO ...] [--out DIR]``.

It starts a real ``kibitz serve`` (embedded NATS and Redis, fresh data folder) on a free
loopback port, drives it with load clients in separate processes that speak only the
public protocol (PROTOCOL.md), measures the floor of the parts underneath (raw
JetStream and Redis rates) in the same run, and writes ``results.json``, ``chart.png``
and a table. See docs/performance.md.
"""
