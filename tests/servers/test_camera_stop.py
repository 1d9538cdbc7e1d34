"""A camera that does not end when it is stopped must not hold up the recording server's
configuration: the lock it is stopped under is the one every later configuration (each
heartbeat's answer among them) waits for."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from watchkeep.servers import _streams
from watchkeep.servers._streams import CameraService, _Camera


def test_a_camera_that_will_not_stop_is_left_behind_and_the_configuration_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    released = asyncio.Event()

    async def stubborn(self: _Camera) -> None:
        # Given a camera whose task goes on after being cancelled (until released)
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                continue

    monkeypatch.setattr(_Camera, "run", stubborn)
    monkeypatch.setattr(_streams, "CAMERA_STOP_TIMEOUT", 0.2)

    async def scenario() -> None:
        service = CameraService("rs1", tmp_path)
        await service.set_cameras([{"name": "cam", "source": {"kind": "synthetic"}}])
        await asyncio.sleep(0)  # its task runs
        # When the configuration removes it and adds another
        with caplog.at_level(logging.ERROR, "watchkeep.recording"):
            await asyncio.wait_for(
                service.set_cameras([{"name": "cam2", "source": {"kind": "synthetic"}}]), 30
            )
        # Then the configuration is taken, and the log says which camera was left behind
        assert list(service.cameras) == ["cam2"]
        assert "rs1: camera cam did not stop within 0.2 s" in caplog.text
        released.set()
        await asyncio.sleep(0)

    asyncio.run(scenario())
