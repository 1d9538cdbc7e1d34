"""Synthetic cameras: valid JPEGs of the asked size, near the asked length, visibly live."""

from __future__ import annotations

import asyncio
import io
import itertools
import re

import pytest
from PIL import Image, ImageDraw

from watchkeep.errors import UsageError
from watchkeep.media import Frame, SyntheticCamera
from watchkeep.media._jpeg import EOI, RESTART_MARKERS, encode_rows

T0 = 1_764_217_596.0  # 2025-11-27 04:26:36 UTC, on a whole second


def decode(frame: Frame) -> Image.Image:
    image = Image.open(io.BytesIO(frame.jpeg))
    assert image.format == "JPEG"
    image.load()  # decodes every MCU: a broken entropy-coded segment fails here
    return image


async def started(name: str, width: int, height: int, fps: float, target: int) -> SyntheticCamera:
    camera = SyntheticCamera(name, width, height, fps, target)
    await camera.start()
    return camera


@pytest.mark.parametrize(
    ("width", "height", "target"),
    [
        (160, 120, 8_000),
        (320, 240, 12_000),
        (640, 480, 20_000),
        (1280, 720, 60_000),
        (333, 201, 9_000),
    ],
)
async def test_frames_are_jpegs_of_the_configured_size_and_length(
    width: int, height: int, target: int
) -> None:
    camera = await started("lobby", width, height, 25, target)
    for sequence in range(30):
        frame = camera.render(sequence, T0 + sequence / 25)
        image = decode(frame)
        assert image.size == (width, height)
        assert image.mode == "RGB"
        # Reachable targets are met exactly: the COM padding absorbs the difference.
        assert len(frame.jpeg) == target


async def test_an_unreachable_target_gives_the_smallest_frames_it_can() -> None:
    camera = await started("tiny", 640, 480, 25, 1_000)
    frame = camera.render(0, T0)
    assert camera.quality == 1
    assert len(frame.jpeg) > 1_000
    assert decode(frame).size == (640, 480)


async def test_a_large_target_is_padded_over_several_comment_segments() -> None:
    camera = await started("big", 320, 240, 25, 300_000)
    frame = camera.render(3, T0)
    assert len(frame.jpeg) == 300_000
    assert decode(frame).size == (320, 240)
    assert frame.jpeg.count(b"\xff\xfe") >= 300_000 // 65_537


async def test_the_comment_says_which_camera_sequence_and_time() -> None:
    camera = await started("door-7", 320, 240, 25, 12_000)
    frame = camera.render(4242, T0 + 0.04)
    assert frame.sequence == 4242
    assert frame.timestamp == T0 + 0.04
    assert frame.camera == "door-7"
    text = decode(frame).info.get("comment", b"")
    assert re.match(rb"watchkeep camera=door-7 seq=4242 ts=1764217596\.040000", text)


async def test_the_visible_time_changes_every_second_and_the_box_every_frame() -> None:
    camera = await started("yard", 320, 240, 25, 12_000)
    top = (0, 0, 320, 16)  # the time band: the first MCU row at this height
    bottom = (0, 240 - 48, 320, 240)  # the moving box runs along the bottom

    def region(frame: Frame, box: tuple[int, int, int, int]) -> bytes:
        return decode(frame).crop(box).tobytes()

    a = camera.render(0, T0 + 0.1)
    b = camera.render(1, T0 + 0.9)
    c = camera.render(2, T0 + 1.0)
    assert region(a, top) == region(b, top)  # same second
    assert region(b, top) != region(c, top)  # the next second shows
    assert region(a, bottom) != region(b, bottom)  # the box moved
    assert region(b, bottom) != region(c, bottom)
    # Nothing else moves: the middle of the picture is the same background.
    middle = (0, 48, 320, 160)
    assert region(a, middle) == region(c, middle)


async def test_render_is_deterministic_and_cameras_differ_by_name() -> None:
    one = await started("cam-one", 320, 240, 25, 12_000)
    two = await started("cam-two", 320, 240, 25, 12_000)
    assert one.render(9, T0).jpeg == one.render(9, T0).jpeg
    name_band = (0, 16, 320, 32)
    first, second = decode(one.render(9, T0)), decode(two.render(9, T0))
    assert first.crop(name_band).tobytes() != second.crop(name_band).tobytes()


def test_rows_encoded_apart_are_the_rows_of_the_whole_picture() -> None:
    # The property frame assembly rests on, against Pillow's own whole-picture encoding.
    image = Image.effect_noise((320, 96), 60).convert("RGB")
    changed = image.copy()
    ImageDraw.Draw(changed).text((5, 20), "12:34:56", fill=(255, 0, 0))
    whole = encode_rows(changed, 50)
    band = encode_rows(changed.crop((0, 16, 320, 48)), 50)
    rows = list(encode_rows(image, 50).rows)
    rows[1:3] = band.rows
    parts = [whole.leading, whole.tables]
    for index, row in enumerate(rows):
        parts += [row, RESTART_MARKERS[index % 8] if index < len(rows) - 1 else EOI]
    out = io.BytesIO()
    changed.save(out, "JPEG", quality=50, subsampling=2, restart_marker_rows=1)
    assert b"".join(parts) == out.getvalue()


async def test_a_started_camera_paces_frames_and_stop_ends_the_iteration() -> None:
    camera = SyntheticCamera("paced", 160, 120, 50, 8_000)
    got: list[Frame] = []
    async with camera:
        async for frame in camera:
            got.append(frame)
            if len(got) == 5:
                break
    assert [f.sequence for f in got] == [0, 1, 2, 3, 4]
    assert all(a.timestamp <= b.timestamp for a, b in itertools.pairwise(got))
    assert all(decode(f).size == (160, 120) for f in got)

    # stop() from elsewhere ends an iteration that is waiting for its next frame.
    slow = SyntheticCamera("slow", 160, 120, 0.1, 8_000)
    await slow.start()
    first = asyncio.Event()

    async def consume() -> int:
        count = 0
        async for _frame in slow:
            count += 1
            first.set()
        return count

    task = asyncio.create_task(consume())
    await first.wait()  # frame 0 came at once; frame 1 is ten seconds away
    await slow.stop()
    assert await task == 1


async def test_bad_configurations_are_refused() -> None:
    with pytest.raises(UsageError, match="invalid camera name"):
        SyntheticCamera("../etc", 320, 240, 25, 10_000)
    with pytest.raises(ValueError, match="fps"):
        SyntheticCamera("ok", 320, 240, 0, 10_000)
    with pytest.raises(ValueError, match="too small"):
        await started("flat", 320, 32, 25, 10_000)
    with pytest.raises(RuntimeError, match="start"):
        SyntheticCamera("ok", 320, 240, 25, 10_000).render(0, T0)
    with pytest.raises(RuntimeError, match="start"):
        aiter(SyntheticCamera("ok", 320, 240, 25, 10_000))
