"""The one interface every camera source offers: start, iterate frames, stop."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable
from types import TracebackType

from watchkeep.media._frame import Frame, validate_camera_name

__all__ = ["CameraSource"]


class CameraSource(abc.ABC):
    """A camera: an async iterator of :class:`Frame` between :meth:`start` and :meth:`stop`.

    One consumer iterates a source (a :class:`FrameHub` fans frames out to many). Iteration
    ends, without an error, once :meth:`stop` has been called::

        async with SyntheticCamera("lobby", 640, 480, 25, 20_000) as camera:
            async for frame in camera:
                hub.publish(frame)
                recorder.write(frame)
    """

    def __init__(self, name: str) -> None:
        self.name = validate_camera_name(name)
        self._started = False
        self._stopping = False
        self._wakeup: asyncio.Future[None] | None = None

    @property
    def running(self) -> bool:
        return self._started and not self._stopping

    @property
    def problem(self) -> str | None:
        """Why the camera sends no pictures now, or None while it does (or may yet)."""
        return None

    async def start(self) -> None:
        """Prepare the source (calibrate, connect lazily); idempotent."""
        if self._started:
            return
        await self._prepare()
        self._started = True
        self._stopping = False

    async def stop(self) -> None:
        """End the iteration at its next step and release resources; idempotent."""
        self._stopping = True
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        await self._release()

    async def run(self, sink: Callable[[Frame], None]) -> None:
        """Hand every frame to ``sink`` as it comes, until :meth:`stop` (call after start).

        What a recording server uses: a source that reads a network stream calls ``sink``
        straight from the code that receives the bytes, with no task switch per frame. An
        exception from ``sink`` ends the run and is raised here.
        """
        async for frame in self:
            sink(frame)

    def __aiter__(self) -> AsyncIterator[Frame]:
        if not self._started:
            raise RuntimeError(f"camera {self.name}: call start() before iterating its frames")
        return self._frames()

    async def __aenter__(self) -> CameraSource:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if :meth:`stop` is called meanwhile.

        A bare future with ``call_later`` costs far less than ``wait_for`` on an event, and
        synthetic cameras pause once per frame.
        """
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(seconds, _resolve, waiter)
        self._wakeup = waiter
        try:
            await waiter
        finally:
            handle.cancel()
            self._wakeup = None

    @abc.abstractmethod
    async def _prepare(self) -> None: ...

    async def _release(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        pass

    @abc.abstractmethod
    def _frames(self) -> AsyncIterator[Frame]: ...


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
