"""The media layer's errors; every one is a :class:`watchkeep.errors.RecordingError`."""

from __future__ import annotations

from watchkeep.errors import RecordingError, UsageError

__all__ = ["InvalidPlaybackRange", "RecordingDiskFull", "UnknownCamera"]


class RecordingDiskFull(RecordingError):
    """The disk holding the recordings (or their index) is full.

    Frames that arrive meanwhile wait in a bounded buffer (the oldest are dropped when it is
    full); the recorder retries on its own and resumes as soon as space returns.
    """

    def __init__(self, camera: str | None, path: str) -> None:
        super().__init__(
            camera,
            "the disk is full (ENOSPC); recording is paused and resumes when space returns",
            path=path,
            fix="free space on that file system, or lower the recording retention (max bytes)",
        )


class UnknownCamera(RecordingError):
    """Playback was asked for a camera that has no recordings here."""

    def __init__(self, camera: str) -> None:
        super().__init__(
            camera,
            "no recordings of this camera on this recording server",
            fix="check the camera name and which recording server records it"
            " (watchkeep site status)",
        )


class InvalidPlaybackRange(RecordingError, UsageError):
    """A playback range that can never be served: end before start, not finite, too long."""

    def __init__(self, camera: str, start: float, end: float, reason: str) -> None:
        super().__init__(
            camera,
            f"cannot play back [{start!r}, {end!r}): {reason}",
            fix="ask for a range with start <= end, in UTC seconds, within the maximum span",
        )
        self.start = start
        self.end = end
