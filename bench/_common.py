"""Small pieces the benchmark's processes share: delay histograms, /proc readings, the
event loop of the load generators."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Histogram", "ProcSample", "idle_seconds", "new_event_loop", "proc_sample"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class Histogram:
    """Frame delays in 1 ms bins up to 10 s (longer ones in the last bin): histograms of
    several processes add up exactly, which percentiles of each would not."""

    BINS = 10_001

    def __init__(self, counts: Iterable[int] | None = None) -> None:
        self.counts = list(counts) if counts is not None else [0] * self.BINS

    def add(self, seconds: float) -> None:
        index = int(seconds * 1000.0)
        self.counts[min(max(index, 0), self.BINS - 1)] += 1

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def percentile(self, fraction: float) -> float | None:
        """The upper edge (seconds) of the bin holding that fraction of the samples."""
        total = self.total
        if total == 0:
            return None
        wanted = fraction * total
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= wanted:
                return (index + 1) / 1000.0
        return self.BINS / 1000.0

    def compact(self) -> dict[str, int]:
        return {str(i): c for i, c in enumerate(self.counts) if c}

    @classmethod
    def from_compact(cls, data: dict[str, int]) -> Histogram:
        histogram = cls()
        for index, count in data.items():
            histogram.counts[int(index)] += count
        return histogram


@dataclass(frozen=True)
class ProcSample:
    """CPU seconds (user + system; system alone; the first thread alone) and resident
    memory of one process."""

    cpu_seconds: float
    rss_bytes: int
    system_seconds: float = 0.0
    # The process's first thread: a server's event loop, whatever its other threads do.
    main_thread_seconds: float = 0.0


def proc_sample(pid: int) -> ProcSample:
    """The process and every live process under it (a recording server's writer process
    is part of that server): CPU and memory added up."""
    utime = stime = resident = 0
    for member in _tree(pid):
        try:
            with open(f"/proc/{member}/stat") as f:
                # The command name may hold spaces: the fields after its closing parenthesis.
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{member}/statm") as f:
                pages = int(f.read().split()[1])
        except FileNotFoundError:
            if member == pid:
                raise
            continue  # a child that ended meanwhile
        utime, stime = utime + int(fields[11]), stime + int(fields[12])
        resident += pages
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return ProcSample(
        (utime + stime) / _CLOCK_TICKS,
        resident * _PAGE,
        stime / _CLOCK_TICKS,
        (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
    )


def idle_seconds() -> float:
    """CPU seconds every core of the machine has spent idle (or waiting for I/O) since boot."""
    with open("/proc/stat") as f:
        fields = f.readline().split()  # "cpu user nice system idle iowait ..."
    return (int(fields[4]) + int(fields[5])) / _CLOCK_TICKS


def _tree(pid: int) -> list[int]:
    found, queue = [pid], [pid]
    while queue:
        parent = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except FileNotFoundError:
                continue
            found += children
            queue += children
    return found


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop (a dependency, pinned in requirements/lock.txt): the load generators must cost as
    little as they can, for they share the two cores with the server they measure."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()
