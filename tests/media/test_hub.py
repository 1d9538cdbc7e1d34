"""The live hub: every subscriber gets the same frames, a slow one cannot hold up the rest."""

from __future__ import annotations

import asyncio

import pytest

from watchkeep.media import Frame, FrameHub


def frames(count: int) -> list[Frame]:
    return [Frame("cam", n, 1000.0 + n, b"\xff\xd8%d\xff\xd9" % n) for n in range(count)]


async def test_a_slow_subscriber_loses_its_oldest_frames_and_nobody_waits() -> None:
    hub = FrameHub("cam", queue_size=4)
    fast = hub.subscribe()
    slow = hub.subscribe()
    received: list[Frame] = []

    async def watch() -> None:
        async for frame in fast:
            received.append(frame)

    watcher = asyncio.create_task(watch())
    sent = frames(50)
    for frame in sent:
        hub.publish(frame)  # never awaits: a stuck subscriber cannot block it
        await asyncio.sleep(0)  # the fast subscriber runs between frames
    hub.close()
    await watcher
    assert received == sent
    assert fast.dropped == 0
    # The slow one never read: it holds the newest four frames and counts the rest.
    assert slow.pending == 4
    assert [f.sequence async for f in slow] == [46, 47, 48, 49]
    assert slow.dropped == 46


async def test_every_subscriber_gets_the_same_objects_not_copies() -> None:
    hub = FrameHub("cam")
    subscriptions = [hub.subscribe() for _ in range(10)]
    frame = frames(1)[0]
    hub.publish(frame)
    for subscription in subscriptions:
        got = await anext(subscription)
        assert got is frame
        assert got.jpeg is frame.jpeg
    assert hub.latest is frame


async def test_the_disconnect_policy_ends_a_slow_subscriber_only() -> None:
    hub = FrameHub("cam", queue_size=3, overflow="disconnect")
    slow = hub.subscribe()
    fast = hub.subscribe()
    for frame in frames(5):
        hub.publish(frame)
        assert await anext(fast) is frame
    assert slow.closed
    assert "too slow" in (slow.closed_reason or "")
    assert [f async for f in slow] == []
    assert hub.subscribers == 1
    assert not fast.closed


async def test_get_many_takes_what_accumulated() -> None:
    hub = FrameHub("cam")
    subscription = hub.subscribe()
    waiting = asyncio.create_task(subscription.get_many())
    await asyncio.sleep(0)
    sent = frames(5)
    for frame in sent:
        hub.publish(frame)
    assert await waiting == sent  # woken by the first, took all five queued by then
    hub.publish(sent[0])
    assert await subscription.get_many(limit=3) == [sent[0]]
    subscription.close()
    assert await subscription.get_many() == []
    assert hub.subscribers == 0


async def test_closing_the_hub_ends_waiting_subscribers_after_their_frames() -> None:
    hub = FrameHub("cam")
    subscription = hub.subscribe()
    sent = frames(2)

    async def collect() -> list[Frame]:
        return [frame async for frame in subscription]

    task = asyncio.create_task(collect())
    for frame in sent:
        hub.publish(frame)
    hub.close()
    assert await task == sent
    late = hub.subscribe()
    assert late.closed
    assert [f async for f in late] == []


def test_bad_hub_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        FrameHub("cam", queue_size=0)
    with pytest.raises(ValueError, match="overflow"):
        FrameHub("cam", overflow="block")  # type: ignore[arg-type]


async def test_a_direct_subscriber_takes_frames_as_published_and_queues_in_order() -> None:
    # Given a subscriber that writes frames itself while its "socket" has room
    hub = FrameHub("cam", queue_size=8)
    written: list[int] = []
    room = True

    def direct(frame: Frame) -> bool:
        if room:
            written.append(frame.sequence)
        return room

    subscription = hub.subscribe(direct=direct)
    sent = frames(10)
    # When it has room, frames never queue; when it has none, they queue
    for frame in sent[:3]:
        hub.publish(frame)
    assert (written, subscription.pending) == ([0, 1, 2], 0)
    room = False
    for frame in sent[3:6]:
        hub.publish(frame)
    assert subscription.pending == 3
    # Then, room again, nothing is offered directly while older frames wait: order holds
    room = True
    hub.publish(sent[6])
    assert written == [0, 1, 2]
    assert [f.sequence for f in await subscription.get_many()] == [3, 4, 5, 6]
    hub.publish(sent[7])
    assert written == [0, 1, 2, 7]
    assert subscription.dropped == 0
