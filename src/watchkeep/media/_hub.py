"""Fan-out of one camera's live frames to many subscribers, none able to slow the others."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Literal

from watchkeep.media._frame import Frame

__all__ = ["FrameHub", "Subscription"]

Overflow = Literal["drop-oldest", "disconnect"]


class Subscription:
    """One subscriber's bounded queue of frames; an async iterator until it is closed.

    Iteration ends when the subscriber closes it, the hub closes, or (with the
    ``"disconnect"`` policy) the subscriber fell a whole queue behind: :attr:`closed_reason`
    says which. :attr:`dropped` counts frames this subscriber never got.

    With ``direct``, a frame published while nothing is queued is first offered to
    ``direct(frame)``, called synchronously from :meth:`FrameHub.publish`; it returns True
    if it took the frame (a live writer whose socket has room writes it at once), False to
    have it queued as usual. Frames keep their order: nothing is offered while any wait.
    """

    __slots__ = ("_direct", "_frames", "_hub", "_waiter", "closed_reason", "dropped", "limit")

    def __init__(
        self, hub: FrameHub, limit: int, direct: Callable[[Frame], bool] | None = None
    ) -> None:
        self._hub = hub
        self._direct = direct
        self._frames: deque[Frame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.limit = limit
        self.dropped = 0
        self.closed_reason: str | None = None

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    @property
    def pending(self) -> int:
        """Frames queued and not yet taken."""
        return len(self._frames)

    def close(self) -> None:
        """Stop receiving frames; queued frames are discarded."""
        self._finish("closed by the subscriber")

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self

    async def __anext__(self) -> Frame:
        while not self._frames:
            if self.closed_reason is not None:
                raise StopAsyncIteration
            await self._wait()
        return self._frames.popleft()

    async def get_many(self, limit: int | None = None) -> list[Frame]:
        """Wait for at least one frame, then take every queued frame (at most ``limit``).

        A writer that sends what accumulated in one call makes fewer, larger writes when
        it falls behind. An empty list means the subscription is closed.
        """
        while not self._frames:
            if self.closed_reason is not None:
                return []
            await self._wait()
        frames = self._frames
        count = len(frames) if limit is None else min(limit, len(frames))
        return [frames.popleft() for _ in range(count)]

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _deliver(self, frame: Frame) -> None:
        frames = self._frames
        if not frames and self._direct is not None and self._direct(frame):
            return
        if len(frames) >= self.limit:
            if self._hub.overflow == "disconnect":
                self.dropped += len(frames) + 1
                self._finish("too slow: fell a whole queue of frames behind")
                return
            frames.popleft()
            self.dropped += 1
        frames.append(frame)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self._frames.clear()
        self._hub._forget(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class FrameHub:
    """Broadcast one camera's frames to live subscribers.

    :meth:`publish` never waits: it appends the same :class:`Frame` object to every
    subscriber's bounded queue. A subscriber whose queue is full loses its oldest frame
    (``overflow="drop-oldest"``, what a live viewer wants) or is disconnected
    (``overflow="disconnect"``). Either way the publisher and the other subscribers go on
    at full speed. Use from the event loop's thread only.
    """

    def __init__(
        self, camera: str, *, queue_size: int = 16, overflow: Overflow = "drop-oldest"
    ) -> None:
        if queue_size < 1:
            raise ValueError("a subscriber queue holds at least one frame")
        if overflow not in ("drop-oldest", "disconnect"):
            raise ValueError(f"overflow must be 'drop-oldest' or 'disconnect', not {overflow!r}")
        self.camera = camera
        self.queue_size = queue_size
        self.overflow: Overflow = overflow
        self.latest: Frame | None = None
        self.published = 0
        self._subscribers: dict[Subscription, None] = {}
        self._closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(
        self,
        *,
        queue_size: int | None = None,
        direct: Callable[[Frame], bool] | None = None,
    ) -> Subscription:
        """A new subscription receiving every frame published from now on (offered first to
        ``direct``, see :class:`Subscription`)."""
        subscription = Subscription(self, queue_size or self.queue_size, direct)
        if self._closed:
            subscription.closed_reason = "the camera's hub is closed"
        else:
            self._subscribers[subscription] = None
        return subscription

    def publish(self, frame: Frame) -> None:
        """Hand ``frame`` to every subscriber; never blocks."""
        self.latest = frame
        self.published += 1
        # A copy of the keys: a "disconnect" overflow removes subscribers while we iterate.
        for subscription in tuple(self._subscribers):
            subscription._deliver(frame)

    def close(self) -> None:
        """End every subscription (after the frames they already hold)."""
        self._closed = True
        for subscription in tuple(self._subscribers):
            subscription.closed_reason = "the camera's hub is closed"
            self._forget(subscription)
            waiter = subscription._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _forget(self, subscription: Subscription) -> None:
        self._subscribers.pop(subscription, None)
