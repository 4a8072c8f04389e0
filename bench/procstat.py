"""Resource use of a process tree, read from /proc (Linux): resident memory and CPU time."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's children list, deduplicated)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                found += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    except OSError:
        return []
    return sorted(set(found))


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids = [pid]
    i = 0
    while i < len(pids):
        pids += [c for c in children(pids[i]) if c not in pids]
        i += 1
    return pids


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after its ")" is space separated.
    return text[text.rindex(")") + 2 :].split()


def rss_bytes(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[21]) * PAGE_SIZE if fields else 0  # field 24: rss in pages


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS if fields else 0.0  # utime + stime


def command_line(pid: int) -> list[str]:
    try:
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


@dataclass(frozen=True)
class TreeUsage:
    """One reading of a process tree."""

    pids: int
    rss_bytes: int
    cpu_seconds: float
    by_name: dict[str, int]  # RSS per executable name
    cpu_by_name: dict[str, float]  # CPU seconds per executable name

    @classmethod
    def of(cls, *kibitz: int, others: Sequence[int] = ()) -> TreeUsage:
        """The trees of the ``kibitz`` processes and of ``others``: each process named by its
        executable, a kibitz one ``kibitz`` (``kibitz-1``, ``kibitz-2`` ... when several)."""
        pids = [p for root in (*kibitz, *others) for p in tree(root)]
        names = {pid: "kibitz" if len(kibitz) == 1 else f"kibitz-{n}" for n, pid in enumerate(kibitz, 1)}
        by_name: dict[str, int] = {}
        cpu_by_name: dict[str, float] = {}
        rss = 0
        cpu = 0.0
        for p in pids:
            r, c = rss_bytes(p), cpu_seconds(p)
            rss += r
            cpu += c
            argv = command_line(p)
            name = names.get(p) or (Path(argv[0].split()[0]).name if argv else str(p))
            by_name[name] = by_name.get(name, 0) + r
            cpu_by_name[name] = cpu_by_name.get(name, 0.0) + c
        return cls(len(pids), rss, cpu, by_name, cpu_by_name)

    def cores_since(self, earlier: TreeUsage, seconds: float) -> dict[str, float]:
        """CPU used since ``earlier``, in cores, per executable name (and ``total``)."""
        cores = {
            name: (used - earlier.cpu_by_name.get(name, 0.0)) / seconds
            for name, used in self.cpu_by_name.items()
        }
        cores["total"] = (self.cpu_seconds - earlier.cpu_seconds) / seconds
        return cores


def cores_text(server: dict[str, float], clients: float) -> str:
    """CPU in cores, as printed beside a step: ``kibitz+nats+redis clients`` (each kibitz, if several)."""
    kibitz = sorted(n for n in server if n.startswith("kibitz"))
    parts = "+".join(f"{server.get(n, 0.0):.2f}" for n in (*kibitz, "nats-server", "redis-server"))
    return f"  cpu {parts} clients {clients:.2f}"
