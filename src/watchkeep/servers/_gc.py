"""Short pauses of Python's cyclic garbage collector in a long-running server.

A server keeps many objects for long (a site of a thousand recording servers: their state,
answers, connections), and its requests make many more. CPython's oldest-generation
collection walks every tracked object that lives: measured on a management server with a
thousand recording servers heartbeating, 30-155 ms each, every two seconds, the event loop
stopped meanwhile, so that a heartbeat's 99th percentile was the collector's pause
(bench/results/ms_scale.md). Objects that have lived a while are moved out of the
collector's sight (``gc.freeze()``) now and then: each collection then walks only what is
younger. Whatever they hold that becomes unreachable only in a reference cycle is freed
once the collector sees them again, at the next thaw (every ``THAW_EVERY`` seconds: one
full collection, one long pause, that seldom). Objects freed by their reference count
(nearly all) are freed at once as always.
"""

from __future__ import annotations

import asyncio
import gc
import time

__all__ = ["FREEZE_EVERY", "THAW_EVERY", "keep_collections_short"]

FREEZE_EVERY = 5.0  # seconds between two moves of the surviving objects out of sight
THAW_EVERY = 6 * 3600.0  # seconds between two full collections of everything


async def keep_collections_short(
    *, freeze_every: float = FREEZE_EVERY, thaw_every: float = THAW_EVERY
) -> None:
    """Run for the life of the server (a task of its own, cancelled at its end)."""
    gc.collect()  # what starting left behind, once
    gc.freeze()
    thawed = time.monotonic()
    while True:
        await asyncio.sleep(freeze_every)
        if time.monotonic() - thawed >= thaw_every:
            gc.unfreeze()
            gc.collect()
            thawed = time.monotonic()
        gc.freeze()
