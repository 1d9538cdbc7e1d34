"""MJPEG cameras against real aiohttp servers on loopback: sloppy streams, drops, TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from camera_support import make_ca_and_server_cert, take

from watchkeep.media import Frame, MjpegCamera, SyntheticCamera, mjpeg_content_type, mjpeg_part

HOST = "127.0.0.2"
Script = Callable[[web.Request, web.StreamResponse, int], Awaitable[None]]


@asynccontextmanager
async def mjpeg_server(
    script: Script, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Serve ``script`` (called with the connection's index) at the URL yielded."""
    connections = 0
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        nonlocal connections
        index = connections
        connections += 1
        if index == 0 and request.query.get("first") == "404":
            return web.Response(status=404, text="no such camera")
        if index == 1 and request.query.get("second") == "html":
            return web.Response(text="<html>login</html>", content_type="text/html")
        response = web.StreamResponse(headers={"Content-Type": mjpeg_content_type()})
        await response.prepare(request)
        await script(request, response, index)
        await release.wait()  # hold the connection open, as a camera does
        return response

    app = web.Application()
    app.router.add_get("/video.mjpeg", stream)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://{HOST}:{port}/video.mjpeg"
    finally:
        release.set()
        await runner.cleanup()


async def jpegs(count: int) -> list[bytes]:
    camera = SyntheticCamera("source", 160, 120, 25, 6_000)
    await camera.start()
    return [camera.render(n, 1000.0 + n).jpeg for n in range(count)]


def part(jpeg: bytes, sequence: int) -> bytes:
    return mjpeg_part(Frame("source", sequence, 1000.0 + sequence / 4, jpeg))


async def test_garbage_and_truncated_parts_are_skipped_and_counted() -> None:
    j = await jpegs(5)
    boundary = b"--watchkeep-frame"

    async def script(_request: web.Request, response: web.StreamResponse, _index: int) -> None:
        lying = b"%b\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%b\r\n" % (
            boundary,
            len(j[0]),
            j[0][:200],  # cut short: the next part's delimiter falls inside "its" length
        )
        not_jpeg = b"%b\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi\r\n" % boundary
        no_length = b"%b\r\nContent-Type: image/jpeg\r\n\r\n%b\r\n" % (boundary, j[3])
        for piece in (
            b"preamble garbage",
            part(j[0], 0),
            b"\x00\x01junk between parts\r\n",
            lying,
            part(j[1], 1),
            not_jpeg,
            part(j[2], 2),
            no_length,
            part(j[4], 4),
        ):
            await response.write(piece)

    async with mjpeg_server(script) as url:
        camera = MjpegCamera("door", url)
        await camera.start()
        frames = await take(camera, 5)
    assert [f.jpeg for f in frames] == j
    assert [f.camera for f in frames] == ["door"] * 5
    assert [f.sequence for f in frames] == [0, 1, 2, 0, 4]  # the bare part: a local count
    assert frames[1].timestamp == 1000.25
    assert camera.stats.bad_parts == 2
    assert camera.stats.skipped_bytes >= len(b"preamble garbage\x00\x01junk between parts")
    assert camera.stats.connections == 1
    assert camera.stats.reconnects == 0
    assert camera.stats.frames == 5


async def test_a_dropped_connection_is_reconnected() -> None:
    j = await jpegs(4)

    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        if index == 0:
            await response.write(part(j[0], 0) + part(j[1], 1) + part(j[2], 2)[:300])
            assert request.transport is not None
            request.transport.abort()  # the camera's network goes away mid-part
        else:
            await response.write(part(j[3], 3))

    async with mjpeg_server(script) as url:
        camera = MjpegCamera("yard", url, backoff_initial=0.01, backoff_max=0.05)
        await camera.start()
        frames = await take(camera, 3)
    assert [f.jpeg for f in frames] == [j[0], j[1], j[3]]
    assert camera.stats.connections == 2
    assert camera.stats.reconnects == 1
    assert camera.stats.bad_parts == 1  # the part cut off by the drop


async def test_refusals_and_non_mjpeg_answers_are_retried() -> None:
    j = await jpegs(1)

    async def script(_request: web.Request, response: web.StreamResponse, _index: int) -> None:
        await response.write(part(j[0], 0))

    async with mjpeg_server(script) as url:
        camera = MjpegCamera("gate", url + "?first=404&second=html", backoff_initial=0.01)
        await camera.start()
        frames = await take(camera, 1)
    assert [f.jpeg for f in frames] == j
    assert camera.stats.reconnects == 2
    assert camera.stats.connections == 1
    assert "multipart" in (camera.stats.last_error or "")


async def test_an_https_camera_is_verified_against_the_given_trust(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path, HOST)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    j = await jpegs(2)

    async def script(_request: web.Request, response: web.StreamResponse, _index: int) -> None:
        await response.write(part(j[0], 0) + part(j[1], 1))

    async with mjpeg_server(script, server_context) as url:
        trusting = ssl.create_default_context(cafile=str(ca))
        camera = MjpegCamera("lab", url, trusting)
        await camera.start()
        assert [f.jpeg for f in await take(camera, 2)] == j

        # The same camera without the CA: refused, retried, and the reason is kept.
        untrusting = MjpegCamera("lab", url, backoff_initial=0.01, backoff_max=0.02)
        await untrusting.start()
        got: list[Frame] = []

        async def consume() -> None:
            async for frame in untrusting:
                got.append(frame)

        task = asyncio.create_task(consume())
        while untrusting.stats.reconnects < 2:
            await asyncio.sleep(0.01)
        await untrusting.stop()
        await task
    assert got == []
    assert untrusting.stats.connections == 0
    assert "certificate" in (untrusting.stats.last_error or "").lower()


def test_bad_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        MjpegCamera("cam", "rtsp://camera/stream")


@asynccontextmanager
async def raw_camera(
    answer: Callable[[bytes, int], Awaitable[bytes | None]],
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A bare TCP camera: ``answer(request, index)`` gives the bytes to send (None: send
    nothing more and hold the connection). Yields the address and the requests received."""
    requests: list[bytes] = []
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        requests.append(request)
        data = await answer(request, len(requests) - 1)
        if data is not None:
            writer.write(data)
            await writer.drain()
        await release.wait()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{HOST}:{port}", requests
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_an_http_1_0_camera_with_a_password_in_its_url() -> None:
    """Many IP cameras answer HTTP/1.0, close-delimited (no chunks), with their own boundary,
    and want HTTP Basic authentication."""
    j = await jpegs(3)

    async def answer(_request: bytes, _index: int) -> bytes:
        head = b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=myboundary\r\n\r\n"
        body = b"".join(
            b"--myboundary\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%b\r\n"
            % (len(jpeg), jpeg)
            for jpeg in j
        )
        return head + body

    async with raw_camera(answer) as (address, requests):
        camera = MjpegCamera("porch", f"http://admin:p%40ss@{address}/video.cgi?res=half")
        await camera.start()
        frames = await take(camera, 3)
    assert [f.jpeg for f in frames] == j
    assert [f.sequence for f in frames] == [0, 1, 2]
    request = requests[0].decode()
    assert request.startswith("GET /video.cgi?res=half HTTP/1.1\r\n")
    assert f"Host: {address}\r\n" in request
    assert "Authorization: Basic YWRtaW46cEBzcw==\r\n" in request  # admin:p@ss


async def test_a_camera_that_goes_silent_is_reconnected_after_the_read_timeout() -> None:
    j = await jpegs(2)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=b\r\n\r\n"

    async def answer(_request: bytes, index: int) -> bytes:
        jpeg = j[index % 2]
        # One frame, then silence with the connection held open.
        return head + b"--b\r\nContent-Length: %d\r\n\r\n%b\r\n" % (len(jpeg), jpeg)

    async with raw_camera(answer) as (address, requests):
        camera = MjpegCamera("attic", f"http://{address}/", read_timeout=0.3, backoff_initial=0.01)
        await camera.start()
        frames = await take(camera, 2)
    assert [f.jpeg for f in frames] == j
    assert len(requests) == 2
    assert camera.stats.reconnects == 1
    assert camera.stats.last_error == "no data within the read timeout"


async def test_an_error_of_the_sink_ends_the_run() -> None:
    j = await jpegs(1)

    async def script(_request: web.Request, response: web.StreamResponse, _index: int) -> None:
        await response.write(part(j[0], 0))

    def sink(_frame: Frame) -> None:
        raise RuntimeError("the consumer broke")

    async with mjpeg_server(script) as url:
        camera = MjpegCamera("hall", url)
        await camera.start()
        with pytest.raises(RuntimeError, match="the consumer broke"):
            await asyncio.wait_for(camera.run(sink), 10)
        await camera.stop()
    assert camera.stats.frames == 1


def test_a_camera_cancelled_as_its_connection_completes_ends() -> None:
    # A recording server stops a camera by cancelling its task, under the lock every later
    # configuration waits for. asyncio.wait_for of Python 3.11 returns the result instead
    # of raising when the cancellation meets a connection that has just completed: the
    # camera then went on reading (and recording) after it was removed.
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # a camera that answers nothing: the stream waits

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        camera = MjpegCamera("door", f"http://127.0.0.1:{port}/video", read_timeout=30.0)
        loop = asyncio.get_running_loop()
        connect = loop.create_connection
        task: asyncio.Task[None] | None = None

        async def connected_then_cancelled(*args: object, **kwargs: object) -> object:
            # Given the connection made, and the camera's task cancelled before it resumes
            made = await connect(*args, **kwargs)  # type: ignore[arg-type]
            assert task is not None
            loop.call_soon(task.cancel)
            return made

        loop.create_connection = connected_then_cancelled  # type: ignore[method-assign]
        try:
            await camera.start()
            task = asyncio.create_task(camera.run(lambda frame: None))
            # Then the task ends, cancelled, at once
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done, "the camera went on after its task was cancelled"
            assert task.cancelled()
        finally:
            loop.create_connection = connect  # type: ignore[method-assign]
            await camera.stop()
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
