"""Synthetic cameras: live-looking JPEG frames made with Pillow, cheap enough to run hundreds.

Encoding a whole picture per frame would cost milliseconds; a recording server benchmark
runs hundreds of cameras at 25 fps on two cores. So a frame is *assembled* from pieces
encoded in advance (see :mod:`._jpeg`): a background picture, a band with the camera's
name (encoded once per camera), a band with the UTC time (encoded once per second, shared by
every camera of the same geometry in the process) and a band with a moving box (one variant
per position, encoded once). The frame's sequence number and exact timestamp travel in a COM
segment, which also pads the frame to the target size. The visible time changes every
second; the box moves every frame, so a person sees at once that video is live.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from watchkeep.media._frame import Frame
from watchkeep.media._jpeg import (
    EOI,
    MCU_SIZE,
    RESTART_MARKERS,
    comment_segments,
    encode_rows,
)
from watchkeep.media._source import CameraSource

__all__ = ["SyntheticCamera"]

_MIN_QUALITY = 1
_MAX_QUALITY = 95
_MAX_POSITIONS = 120
# Room kept for the COM segment when calibrating: marker, length and its text.
_COMMENT_ALLOWANCE = 96
_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
_Painter = Callable[[ImageDraw.ImageDraw, tuple[int, int]], None]


@dataclass(frozen=True)
class _Geometry:
    width: int
    height: int
    fps: float
    target_bytes: int


class _Template:
    """Everything cameras of one geometry share: calibration, background, bands."""

    def __init__(self, geometry: _Geometry) -> None:
        self.geometry = geometry
        width, height = geometry.width, geometry.height
        self.row_count = -(-height // MCU_SIZE)
        full_rows = height // MCU_SIZE
        band = max(1, round(height / 24 / MCU_SIZE))
        self.time_rows = (0, band)
        self.name_rows = (band, 2 * band)
        moving = max(1, round(height / 10 / MCU_SIZE))
        if 2 * band + moving > full_rows:
            raise ValueError(
                f"a synthetic frame of {width}x{height} is too small for its captions:"
                f" use at least {MCU_SIZE * (2 * band + moving)} pixels of height"
            )
        # The moving box runs along the bottom of the picture, above a partial last MCU row.
        self.moving_rows = (full_rows - moving, full_rows)
        self.font = _font(int(band * MCU_SIZE * 0.7))
        self.background = _scene(width, height)
        self.positions = max(2, min(_MAX_POSITIONS, round(2 * geometry.fps)))
        self.quality = self._calibrate()
        picture = encode_rows(self.background, self.quality)
        if len(picture.rows) != self.row_count:
            raise RuntimeError("Pillow did not put a restart marker after every MCU row")
        self.leading = picture.leading
        self.tables = picture.tables
        self.rows = picture.rows
        self.moving = [self._band(self.moving_rows, self._box(p)) for p in range(self.positions)]
        self._time_lock = threading.Lock()
        self._time_bands: dict[int, list[bytes]] = {}

    def rows_for_second(self, second: int) -> list[bytes]:
        """The time band showing ``second`` (UTC), encoded once and shared by all cameras."""
        with self._time_lock:
            band = self._time_bands.get(second)
            if band is None:
                text = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(second))
                band = self._time_bands[second] = self._band(self.time_rows, self._caption(text))
                # Cameras a little behind others still find their second; older ones go.
                while len(self._time_bands) > 4:
                    del self._time_bands[min(self._time_bands)]
            return band

    def name_band(self, text: str) -> list[bytes]:
        return self._band(self.name_rows, self._caption(text))

    # Drawing. Each band is drawn on its own crop of the background, then encoded alone.

    def _band(self, rows: tuple[int, int], paint: _Painter) -> list[bytes]:
        band = self._crop(self.background, rows)
        paint(ImageDraw.Draw(band), band.size)
        encoded = encode_rows(band, self.quality).rows
        if len(encoded) != rows[1] - rows[0]:
            raise RuntimeError("a band did not encode to whole MCU rows")
        return encoded

    def _crop(self, image: Image.Image, rows: tuple[int, int]) -> Image.Image:
        return image.crop((0, rows[0] * MCU_SIZE, self.geometry.width, rows[1] * MCU_SIZE))

    def _caption(self, text: str) -> _Painter:
        def paint(draw: ImageDraw.ImageDraw, size: tuple[int, int]) -> None:
            width, height = size
            draw.rectangle((0, 0, width, height), fill=(12, 14, 20))
            draw.text(
                (height // 3, height // 2), text, font=self.font, fill=(240, 240, 240), anchor="lm"
            )

        return paint

    def _box(self, position: int) -> _Painter:
        def paint(draw: ImageDraw.ImageDraw, size: tuple[int, int]) -> None:
            width, height = size
            box = max(MCU_SIZE, width // 12)
            left = (width - box) * position // (self.positions - 1)
            draw.rectangle((0, height - 3, width, height), fill=(90, 90, 90))
            draw.rectangle(
                (left, 2, left + box, height - 5), fill=(250, 200, 30), outline=(20, 20, 20)
            )

        return paint

    def _calibrate(self) -> int:
        """The highest JPEG quality whose frames stay under the target size."""
        sample = self.background.copy()
        for rows, paint in (
            (self.time_rows, self._caption("2000-01-01 00:00:00 UTC")),
            (self.name_rows, self._caption("camera-name  640x480  25 fps")),
            (self.moving_rows, self._box(0)),
        ):
            band = self._crop(sample, rows)
            paint(ImageDraw.Draw(band), band.size)
            sample.paste(band, (0, rows[0] * MCU_SIZE))
        budget = self.geometry.target_bytes - _COMMENT_ALLOWANCE
        low, high = _MIN_QUALITY, _MAX_QUALITY
        best = _MIN_QUALITY
        while low <= high:
            middle = (low + high) // 2
            if _encoded_size(sample, middle) <= budget:
                best, low = middle, middle + 1
            else:
                high = middle - 1
        return best


def _encoded_size(image: Image.Image, quality: int) -> int:
    picture = encode_rows(image, quality)
    return len(picture.leading) + len(picture.tables) + sum(len(r) + 2 for r in picture.rows)


def _font(size: int) -> _Font:
    # Pillow ships a scalable font when FreeType is available; otherwise a small bitmap font.
    return ImageFont.load_default(size=max(8, size))


def _scene(width: int, height: int) -> Image.Image:
    """A dusk skyline: a sky gradient, lit windows and a little sensor noise."""
    sky = Image.linear_gradient("L").resize((width, height))
    image = Image.merge(
        "RGB",
        [sky.point(lambda v, k=k: 25 + v * k // 3) for k in (1, 2, 3)],
    )
    draw = ImageDraw.Draw(image)
    columns = 12
    for i in range(columns):
        left = i * width // columns
        right = (i + 1) * width // columns - max(2, width // 200)
        top = height - height // 3 - (i * 37 % 5) * height // 12
        draw.rectangle((left + 2, top, right, height), fill=(60 + i * 10, 70, 80 + i * 5))
        step_x, step_y = max(8, width // 100), max(8, height // 40)
        for y in range(top + step_y // 2, height - step_y, step_y):
            for x in range(left + step_x, right - step_x, step_x):
                lit = (x * 7 + y * 13) % 5 != 0
                draw.rectangle(
                    (x, y, x + max(2, width // 300), y + max(2, height // 200)),
                    fill=(200, 190, 120) if lit else (40, 40, 40),
                )
    noise = Image.effect_noise((width, height), 64).convert("RGB")
    return Image.blend(image, noise, 0.03)


_templates: dict[_Geometry, _Template] = {}
_templates_lock = threading.Lock()


def _template(geometry: _Geometry) -> _Template:
    with _templates_lock:
        template = _templates.get(geometry)
        if template is None:
            template = _templates[geometry] = _Template(geometry)
        return template


class SyntheticCamera(CameraSource):
    """A camera that makes its own JPEG frames at ``fps``, each about ``target_bytes`` long.

    :meth:`start` calibrates the JPEG quality once (the highest whose frames fit the target)
    and pads every frame to exactly ``target_bytes`` with a COM segment when it comes out
    smaller. A target below what the geometry can reach at quality 1 gives larger frames:
    :attr:`quality` and the frames' length tell. Frames carry ``watchkeep camera=...
    seq=... ts=...`` in a COM segment, so a file of them says where each came from.
    """

    def __init__(self, name: str, width: int, height: int, fps: float, target_bytes: int) -> None:
        super().__init__(name)
        if not (16 <= width <= 8192 and 16 <= height <= 8192):
            raise ValueError(
                f"a synthetic frame must be 16-8192 pixels a side, not {width}x{height}"
            )
        if not 0 < fps <= 240:
            raise ValueError(f"fps must be in (0, 240], not {fps}")
        if target_bytes < 1:
            raise ValueError("target_bytes must be positive")
        self.width = width
        self.height = height
        self.fps = fps
        self.target_bytes = target_bytes
        self._geometry = _Geometry(width, height, float(fps), target_bytes)
        self._template: _Template | None = None
        self._body: list[bytes] = []
        self._second = -1
        self._position = -1
        self._comment_prefix = f"watchkeep camera={name} ".encode()
        self._sequence = 0

    @property
    def quality(self) -> int:
        """The JPEG quality chosen by calibration (after :meth:`start`)."""
        return self._ready().quality

    async def _prepare(self) -> None:
        # Calibration and the first encodings take tens of milliseconds of CPU: off the loop.
        await asyncio.to_thread(self._build)

    def _build(self) -> None:
        template = _template(self._geometry)
        name_band = template.name_band(f"{self.name}  {self.width}x{self.height}  {self.fps:g} fps")
        # The frame after the COM segments, as a list of pieces: the tables, then each MCU
        # row followed by its restart marker (EOI after the last). Rendering a frame swaps
        # the pieces of the time and moving bands in place and joins once.
        body: list[bytes] = [template.tables]
        last = template.row_count - 1
        for index, row in enumerate(template.rows):
            body += (row, RESTART_MARKERS[index % 8] if index < last else EOI)
        first, end = template.name_rows
        body[1 + 2 * first : 1 + 2 * end : 2] = name_band
        self._body = body
        self._second = -1
        self._position = -1
        self._template = template

    def _ready(self) -> _Template:
        if self._template is None:
            raise RuntimeError(f"camera {self.name}: call start() first")
        return self._template

    def render(self, sequence: int, timestamp: float) -> Frame:
        """The frame this camera shows as number ``sequence`` at ``timestamp`` (UTC seconds).

        Deterministic: the same arguments give the same bytes. Costs one join of
        pre-encoded pieces (and, once per second per geometry, encoding the time band).
        """
        template = self._ready()
        body = self._body
        second = int(timestamp)
        if second != self._second:
            first, end = template.time_rows
            body[1 + 2 * first : 1 + 2 * end : 2] = template.rows_for_second(second)
            self._second = second
        position = sequence % template.positions
        if position != self._position:
            first, end = template.moving_rows
            body[1 + 2 * first : 1 + 2 * end : 2] = template.moving[position]
            self._position = position
        comment = self._comment_prefix + b"seq=%d ts=%.6f" % (sequence, timestamp)
        size = len(template.leading) + sum(map(len, body)) + len(comment) + 4
        parts: list[bytes | memoryview] = [template.leading]
        parts += comment_segments(comment, self.target_bytes - size)
        parts += body
        return Frame(self.name, sequence, timestamp, b"".join(parts))

    async def _frames(self) -> AsyncIterator[Frame]:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.fps
        due = loop.time()
        while not self._stopping:
            now = loop.time()
            if due > now:
                await self._pause(due - now)
                if self._stopping:
                    break
            frame = self.render(self._sequence, time.time())
            self._sequence += 1
            yield frame
            due += interval
            now = loop.time()
            if now - due > interval:
                # More than a frame late (a slow consumer or a busy loop): a camera does not
                # send a burst to catch up, it carries on from now.
                due = now
