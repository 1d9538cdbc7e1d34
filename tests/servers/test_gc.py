"""Servers move what survives out of the cyclic collector's sight, and thaw it seldom.

Given a server's collector task, when it has run a while, then the objects alive are
frozen (a collection walks only younger ones); a reference cycle that was frozen and then
dropped is still there until the next thaw, and is collected by it.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from watchkeep.servers._gc import keep_collections_short


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


@pytest.fixture
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()


async def watch(cycle: weakref.ref[Node], seen: list[tuple[int, bool]]) -> None:
    task = asyncio.create_task(keep_collections_short(freeze_every=0.01, thaw_every=0.5))
    try:
        for _ in range(400):  # bounded: at most 400 looks (about 4 s)
            await asyncio.sleep(0.01)
            gc.collect(1)  # the young generations, as the collector runs them on its own
            seen.append((gc.get_freeze_count(), cycle() is not None))
            if cycle() is None:
                return
    finally:
        task.cancel()


def test_a_frozen_cycle_lives_until_the_thaw_and_no_longer(thawed: None) -> None:
    node = Node()
    cycle = weakref.ref(node)
    seen: list[tuple[int, bool]] = []

    async def go() -> None:
        nonlocal node
        await asyncio.sleep(0)
        looking = asyncio.create_task(watch(cycle, seen))
        await asyncio.sleep(0.05)  # frozen by now, with the cycle
        assert gc.get_freeze_count() > 0
        del node
        # Then a full collection does not walk the frozen cycle: it lives on
        gc.collect()
        assert cycle() is not None
        await looking

    asyncio.run(go())
    # and the thaw freed it
    assert cycle() is None, f"the thaw did not collect the cycle (looks: {len(seen)})"
