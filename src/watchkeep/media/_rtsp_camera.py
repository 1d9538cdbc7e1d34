"""RTSP cameras: Motion JPEG over RTP (RFC 2435), H.264 (RFC 6184) or H.265 (RFC 7798),
pulled over RTSP 1.0 (RFC 2326) with the media interleaved on the RTSP connection
(``rtsp://``, or ``rtsps://`` over TLS).

One TCP connection carries everything: OPTIONS, DESCRIBE (the SDP names the video and
its codec), SETUP (``RTP/AVP/TCP;interleaved``, which crosses firewalls and NAT and loses
nothing to UDP drops), PLAY, keep-alives, and the RTP packets framed by ``$``. Basic and
Digest authentication (MD5 or SHA-256, RFC 7616) take the user name and password from
the URL. A camera that offers none of these (raw video, MPEG-4 Part 2, say) is refused
with a line that says what it offers and how to change it. H.264 and H.265 are recorded as
the camera sends them: nothing is decoded (see :mod:`._rtp_h26x`); the camera's RTCP
sender reports (channel 1) give the wall-clock time of its pictures.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import SplitResult, unquote

from watchkeep.media._frame import Frame
from watchkeep.media._h26x import CODECS, ParameterSets
from watchkeep.media._network_camera import (
    CameraStream,
    NetworkCamera,
    StreamEnded,
    basic_authorization,
)
from watchkeep.media._rtp_h26x import (
    AccessUnit,
    H26xDepacketizer,
    H26xFramer,
    new_depacketizer,
    sender_report,
)
from watchkeep.media._rtp_jpeg import RtpJpegDepacketizer, parse_rtp

__all__ = ["RtspCamera", "SdpVideo", "parse_sdp"]

_MAX_MESSAGE = 64 * 1024  # an RTSP response head and body (an SDP is a few hundred bytes)
_DEFAULT_SESSION_TIMEOUT = 60.0
_STATIC_VIDEO = {26: "JPEG", 31: "H261", 32: "MPV", 33: "MP2T", 34: "H263"}
_RECORDED = ("JPEG", *CODECS)
_CODEC_FIX = (
    "set the camera's stream to H.264, H.265 or Motion JPEG in its settings, or pick the "
    "path of such a stream"
)


@dataclass(frozen=True)
class SdpVideo:
    """What watchkeep needs of a session description (RFC 4566): the video streams'
    codecs, the first stream watchkeep records (Motion JPEG, H.264 or H.265): its codec,
    control URL, payload type, clock rate, format parameters (``a=fmtp``: the parameter
    sets of H.264 and H.265), its size when given (``a=x-dimensions``), and the session's
    own control URL."""

    codecs: tuple[str, ...]
    control: str | None
    payload_type: int | None
    dimensions: tuple[int, int] | None
    session_control: str | None
    codec: str | None = None
    clock_rate: int = 90_000
    fmtp: tuple[tuple[str, str], ...] = ()

    def parameter_sets(self) -> ParameterSets:
        """The H.264/H.265 parameter sets the SDP gives (``sprop-parameter-sets``,
        ``sprop-vps/sps/pps``); those missing or unreadable are None."""
        params = dict(self.fmtp)
        codec = self.codec or "H264"
        found: dict[str, bytes | None] = {"vps": None, "sps": None, "pps": None}
        if codec == "H264":
            for text in params.get("sprop-parameter-sets", "").split(","):
                nal = _base64(text)
                if nal:
                    kind = nal[0] & 0x1F
                    found[{7: "sps", 8: "pps"}.get(kind, "other")] = nal
        else:
            for which in ("vps", "sps", "pps"):
                found[which] = _base64(params.get(f"sprop-{which}", "").split(",")[0])
        return ParameterSets(codec, found["vps"], found["sps"], found["pps"])


@dataclass
class _Media:
    kind: str
    formats: list[int]
    rtpmap: dict[int, str] = field(default_factory=dict)
    clock: dict[int, int] = field(default_factory=dict)
    fmtp: dict[int, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    control: str | None = None
    dimensions: tuple[int, int] | None = None


def parse_sdp(text: str) -> SdpVideo:
    """Read the video streams of ``text`` (an SDP)."""
    session_control: str | None = None
    media: list[_Media] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            fields = line[2:].split()
            kind = fields[0] if fields else ""
            media.append(_Media(kind, [int(f) for f in fields[3:] if f.isdigit()]))
        elif line.startswith("a="):
            name, _, value = line[2:].partition(":")
            if not media:
                if name == "control":
                    session_control = value.strip()
                continue
            current = media[-1]
            if name == "rtpmap":
                payload_type, _, encoding = value.partition(" ")
                if payload_type.strip().isdigit():
                    name, _, rate = encoding.strip().partition("/")
                    current.rtpmap[int(payload_type)] = name.strip().upper()
                    rate = rate.partition("/")[0]
                    if rate.isdigit():
                        current.clock[int(payload_type)] = int(rate)
            elif name == "fmtp":
                payload_type, _, text = value.strip().partition(" ")
                if payload_type.isdigit():
                    pairs = (p.strip().partition("=") for p in text.split(";") if p.strip())
                    current.fmtp[int(payload_type)] = tuple(
                        (key.strip().lower(), val.strip()) for key, _, val in pairs
                    )
            elif name == "control":
                current.control = value.strip()
            elif name == "x-dimensions":
                size = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", value)
                if size:
                    current.dimensions = (int(size[1]), int(size[2]))
    codecs: list[str] = []
    chosen: SdpVideo | None = None
    for entry in media:
        if entry.kind != "video":
            continue
        for number in entry.formats:
            codec = entry.rtpmap.get(number) or _STATIC_VIDEO.get(number, f"payload type {number}")
            if codec not in codecs:
                codecs.append(codec)
            if chosen is None and codec in _RECORDED:
                chosen = SdpVideo(
                    (),
                    entry.control,
                    number,
                    entry.dimensions,
                    session_control,
                    codec,
                    entry.clock.get(number, 90_000),
                    entry.fmtp.get(number, ()),
                )
    if chosen is None:
        return SdpVideo(tuple(codecs), None, None, None, session_control)
    return dataclasses.replace(chosen, codecs=tuple(codecs))


class RtspCamera(NetworkCamera):
    """A camera streaming Motion JPEG, H.264 or H.265 over RTSP at ``url`` (``rtsp://``
    port 554, or ``rtsps://`` port 322 over TLS, verified with ``ssl_context``).

    Frames are numbered by a local counter. Motion JPEG pictures are stamped with the
    arrival time of their first packet (a camera's own clock is often wrong; the recording
    server's is the one the site keeps); H.264/H.265 pictures with their RTP time, mapped to
    wall-clock time as :class:`~watchkeep.media._rtp_h26x.H26xFramer` says. A picture with a
    lost packet is dropped and counted in ``stats.bad_parts`` (H.264/H.265: up to the next
    keyframe). Every other failure (refused, wrong password, no MJPEG, no data
    within ``read_timeout``) ends the connection with a reason in ``stats.last_error``,
    logged, and the camera is tried again with back-off.
    """

    schemes: ClassVar[dict[str, tuple[int, bool]]] = {"rtsp": (554, False), "rtsps": (322, True)}

    @property
    def kind(self) -> str:
        return "an RTSP"

    @property
    def request_url(self) -> str:
        """The URL as RTSP requests name it: without the user name and password."""
        parts = self._split
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return parts._replace(netloc=netloc, fragment="").geturl()

    def _open(self, sink: Callable[[Frame], None], loop: asyncio.AbstractEventLoop) -> _Session:
        return _Session(self, sink, loop)


_Pending = tuple[int, str, str, "dict[str, str] | None", "Callable[[_Response], None]"]


class _Session(CameraStream):
    """One RTSP connection: the requests up to PLAY, then the interleaved RTP packets."""

    def __init__(
        self, camera: RtspCamera, sink: Callable[[Frame], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(camera, sink, loop)
        self._rtsp = camera
        self._data = b""
        self._cseq = 0
        # The request awaiting its answer: CSeq, method, URL, extra headers, what comes next.
        self._waiting: _Pending | None = None
        self._auth = _Authenticator(camera._split)
        self._session: str | None = None
        self._session_timeout = _DEFAULT_SESSION_TIMEOUT
        self._base = camera.request_url
        self._play_url = self._base
        self._public: set[str] = set()
        self._sdp: SdpVideo | None = None
        self._channel = 0
        self._depacketizer: RtpJpegDepacketizer | None = None
        self._h26x: H26xDepacketizer | None = None
        self._framer: H26xFramer | None = None
        self._picture_timestamp: int | None = None
        self._picture_arrival = 0.0
        self._playing = False
        self._keepalive: asyncio.TimerHandle | None = None

    def _begin(self, transport: asyncio.Transport) -> None:
        self._send("OPTIONS", self._base, self._after_options)

    def _ended(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def _close(self, transport: asyncio.Transport) -> None:
        if self._session is not None and not transport.is_closing():
            # A polite goodbye, so that the camera frees the session at once.
            transport.write(self._request("TEARDOWN", self._play_url))
            transport.close()
        else:
            transport.abort()

    def eof_received(self) -> bool:
        if self._playing:
            self.end("the camera ended the stream")
        else:
            self.end("the camera closed the connection before the stream began")
        return False

    # Requests and responses.

    def _request(self, method: str, url: str, headers: dict[str, str] | None = None) -> bytes:
        self._cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self._cseq}", "User-Agent: watchkeep"]
        authorization = self._auth.header(method, url)
        if authorization:
            lines.append(f"Authorization: {authorization}")
        if self._session is not None:
            lines.append(f"Session: {self._session}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(
        self,
        method: str,
        url: str,
        then: Callable[[_Response], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        if self._transport is None:
            return
        self._transport.write(self._request(method, url, headers))
        self._waiting = (self._cseq, method, url, headers, then)

    def _received(self, view: memoryview) -> None:
        # The read, after what the last one left (a packet or message cut by its end), as
        # one bytes object: made once per read, each packet in it is a view of it.
        data = b"".join((self._data, view)) if self._data else bytes(view)
        packets = memoryview(data)
        pos, end = 0, len(data)
        while pos < end and not self._done:
            if data[pos] == 0x24:  # "$": an interleaved packet
                if end - pos < 4:
                    break
                video = self._h26x
                if video is not None and self._playing and data[pos + 1] == self._channel:
                    # Every whole video packet from here, in one call.
                    assert self._sdp is not None
                    assert self._sdp.payload_type is not None
                    units, after = video.feed_interleaved(
                        data, pos, end, self._channel, self._sdp.payload_type
                    )
                    if units:
                        self._units(units)
                    if after == pos:
                        break  # the packet goes on in the next read
                    pos = after
                    continue
                length = (data[pos + 2] << 8) | data[pos + 3]
                if end - pos < 4 + length:
                    break
                channel = data[pos + 1]
                if channel == self._channel and self._playing:
                    self._packet(packets[pos + 4 : pos + 4 + length])
                elif channel == self._channel + 1 and self._framer is not None:
                    report = sender_report(packets[pos + 4 : pos + 4 + length])
                    if report is not None:
                        self._framer.sender_report(*report)
                pos += 4 + length
                continue
            head_end = data.find(b"\r\n\r\n", pos, pos + _MAX_MESSAGE)
            if head_end < 0:
                if end - pos >= _MAX_MESSAGE:
                    raise StreamEnded("an RTSP message head over 64 KiB: not an RTSP camera?")
                break
            head = bytes(data[pos:head_end]).decode("latin-1")
            message = _Response.parse(head)
            body_end = head_end + 4 + message.content_length
            if message.content_length > _MAX_MESSAGE:
                raise StreamEnded("an RTSP message body over 64 KiB")
            if end < body_end:
                break
            message.body = data[head_end + 4 : body_end]
            pos = body_end
            self._message(message)
        self._data = data[pos:] if pos < end else b""

    def _message(self, message: _Response) -> None:
        if message.request_method is not None:
            # The camera asks something of us (a keep-alive of its own, say): not supported.
            if self._transport is not None:
                self._transport.write(
                    f"RTSP/1.0 501 Not Implemented\r\nCSeq: {message.cseq}\r\n\r\n".encode()
                )
            return
        waiting = self._waiting
        if waiting is None or message.cseq != waiting[0]:
            return  # the answer to a keep-alive, or a stray one
        self._waiting = None
        _, method, url, headers, then = waiting
        if message.status == 401 and self._auth.challenge(message):
            self._send(method, url, then, headers)
            return
        if message.status == 401:
            raise StreamEnded(self._auth.refusal())
        if message.status == 461:
            raise StreamEnded(
                f"the camera cannot send its stream over the RTSP connection (RTSP 461 to "
                f"{method}); fix: allow RTSP over TCP (interleaved) in the camera's settings"
            )
        if not 200 <= message.status < 300:
            hint = "; fix: check the stream's path in the URL" if message.status == 404 else ""
            raise StreamEnded(f"RTSP {message.status} {message.reason} to {method}{hint}")
        then(message)

    def _after_options(self, response: _Response) -> None:
        self._public = {m.strip().upper() for m in response.header("public").split(",")}
        self._send("DESCRIBE", self._base, self._after_describe, {"Accept": "application/sdp"})

    def _after_describe(self, response: _Response) -> None:
        base = response.header("content-base") or response.header("content-location")
        if base:
            self._base = base
        sdp = parse_sdp(response.body.decode("utf-8", "replace"))
        if sdp.payload_type is None:
            offered = ", ".join(sdp.codecs) if sdp.codecs else "no video"
            raise StreamEnded(
                f"the camera's RTSP stream offers {offered}, and watchkeep records H.264, "
                f"H.265 and Motion JPEG (RTP/JPEG); fix: {_CODEC_FIX}"
            )
        self._sdp = sdp
        self._send(
            "SETUP",
            _resolve(self._base, sdp.control),
            self._after_setup,
            {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"},
        )

    def _after_setup(self, response: _Response) -> None:
        session = response.header("session")
        if not session:
            raise StreamEnded("the camera answered SETUP without a session")
        ident, *params = (p.strip() for p in session.split(";"))
        self._session = ident
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "timeout":
                with contextlib.suppress(ValueError):
                    self._session_timeout = max(float(value), 2.0)
        transport = response.header("transport")
        channels = re.search(r"interleaved=(\d+)", transport)
        if transport and "TCP" not in transport.upper():
            raise StreamEnded(
                f"the camera answered SETUP with a transport over UDP ({transport}); fix: "
                "allow RTSP over TCP (interleaved) in the camera's settings"
            )
        self._channel = int(channels[1]) if channels else 0
        sdp = self._sdp
        assert sdp is not None
        play = _resolve(self._base, sdp.session_control) if sdp.session_control else self._base
        self._play_url = play
        self._send("PLAY", play, self._after_play, {"Range": "npt=0.000-"})

    def _after_play(self, _response: _Response) -> None:
        sdp = self._sdp
        assert sdp is not None
        if sdp.codec == "JPEG":
            self._depacketizer = RtpJpegDepacketizer(sdp.dimensions)
        else:
            assert sdp.codec is not None
            camera = self._rtsp
            self._h26x = new_depacketizer(sdp.codec)
            self._framer = H26xFramer(
                camera.name, sdp.codec, sdp.parameter_sets(), camera._next_sequence, sdp.clock_rate
            )
        self._playing = True
        self._rtsp.stats.connections += 1
        self._keepalive = self._loop.call_later(self._session_timeout / 2, self._keep_alive)

    def _keep_alive(self) -> None:
        # Cameras end a session that hears nothing within its timeout, RTP over TCP or not.
        if self._done or self._transport is None:
            return
        method = "GET_PARAMETER" if "GET_PARAMETER" in self._public else "OPTIONS"
        self._transport.write(self._request(method, self._play_url))
        self._keepalive = self._loop.call_later(self._session_timeout / 2, self._keep_alive)

    # Media.

    def _packet(self, data: memoryview) -> None:
        if self._h26x is not None:
            self._video_packet(data)
            return
        packet = parse_rtp(bytes(data))
        assert self._sdp is not None
        if packet is None or packet.payload_type != self._sdp.payload_type:
            return
        depacketizer = self._depacketizer
        assert depacketizer is not None
        if packet.timestamp != self._picture_timestamp:
            self._picture_timestamp = packet.timestamp
            self._picture_arrival = time.time()
        dropped = depacketizer.dropped
        jpeg = depacketizer.push(packet)
        stats = self._rtsp.stats
        if depacketizer.dropped != dropped:
            stats.bad_parts += depacketizer.dropped - dropped
        if jpeg is None:
            return
        camera = self._rtsp
        stats.frames += 1
        self.frames += 1
        self._sink(Frame(camera.name, camera._next_sequence(), self._picture_arrival, jpeg))

    def _video_packet(self, data: memoryview) -> None:
        video, framer = self._h26x, self._framer
        assert video is not None
        assert framer is not None
        assert self._sdp is not None
        assert self._sdp.payload_type is not None
        units = video.feed(data, self._sdp.payload_type)
        if units:
            self._units(units)

    def _units(self, units: list[AccessUnit]) -> None:
        framer = self._framer
        assert framer is not None
        # When the picture came (its last packet): the wall-clock time of a camera that
        # sends no RTCP sender report.
        arrival = time.time()
        camera = self._rtsp
        stats = camera.stats
        for unit in units:
            dropped = framer.dropped
            frame = framer.push(unit, arrival)
            if framer.dropped != dropped:
                stats.bad_parts += framer.dropped - dropped
                if framer.problem is not None and stats.last_error != framer.problem:
                    # Shown as the camera's problem (site status) until a picture comes.
                    stats.last_error = framer.problem
                    camera._frames_at_failure = stats.frames
            if frame is not None:
                stats.frames += 1
                self.frames += 1
                self._sink(frame)


@dataclass
class _Response:
    """An RTSP message: a response, or (rarely) a request from the camera."""

    status: int
    reason: str
    request_method: str | None
    headers: list[tuple[str, str]]
    body: bytes = b""

    @classmethod
    def parse(cls, head: str) -> _Response:
        lines = head.split("\r\n")
        first = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers.append((name.strip().lower(), value.strip()))
        if first[0].startswith("RTSP/") and len(first) >= 2 and first[1].isdigit():
            return cls(int(first[1]), first[2] if len(first) > 2 else "", None, headers)
        if len(first) == 3 and first[2].startswith("RTSP/"):
            return cls(0, "", first[0], headers)
        raise StreamEnded(f"not an RTSP answer: {lines[0][:80]!r}")

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return ""

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    @property
    def cseq(self) -> int:
        value = self.header("cseq")
        return int(value) if value.isdigit() else -1

    @property
    def content_length(self) -> int:
        value = self.header("content-length")
        return int(value) if value.isdigit() else 0


def _base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.strip(), validate=True) or None
    except (binascii.Error, ValueError):
        return None


def _resolve(base: str, control: str | None) -> str:
    """A control URL of the SDP made absolute (RFC 2326 C.1.1)."""
    if not control or control == "*":
        return base
    if re.match(r"rtsps?://", control, re.IGNORECASE):
        return control
    return base + control if base.endswith("/") else f"{base}/{control}"


class _Authenticator:
    """HTTP Basic or Digest authentication (RFC 7617, RFC 7616) with the URL's user and
    password, once the camera has asked for it."""

    def __init__(self, url: SplitResult) -> None:
        self.user = unquote(url.username) if url.username is not None else None
        self.password = unquote(url.password or "")
        self.scheme: str | None = None
        self.params: dict[str, str] = {}
        self.count = 0
        self.failed = False

    def challenge(self, response: _Response) -> bool:
        """Take the camera's challenge; True if the request is worth sending again."""
        if self.user is None or self.failed:
            return False
        offers = response.all("www-authenticate")
        digest = [o for o in offers if o.lower().startswith("digest")]
        basic = [o for o in offers if o.lower().startswith("basic")]
        retry = True
        if digest:
            params = _auth_params(digest[0][6:])
            # A stale nonce is a new nonce for the same good password; anything else is
            # a refusal of the password we already sent.
            if self.scheme == "digest" and params.get("stale", "").lower() != "true":
                retry = False
            self.scheme, self.params, self.count = "digest", params, 0
        elif basic:
            retry = self.scheme != "basic"
            self.scheme = "basic"
        else:
            return False
        self.failed = not retry
        return retry

    def refusal(self) -> str:
        if self.user is None:
            return (
                "the camera asks for a user name and password (RTSP 401); fix: put them in "
                "the camera's URL: rtsp://USER:PASSWORD@host/path"
            )
        return (
            f"the camera refused user {self.user!r} and its password (RTSP 401); fix: put "
            "the right ones in the camera's URL"
        )

    def header(self, method: str, url: str) -> str | None:
        if self.scheme == "basic":
            return basic_authorization(self.user or "", self.password)
        if self.scheme != "digest":
            return None
        params = self.params
        algorithm = params.get("algorithm", "MD5")
        name = algorithm.upper().removesuffix("-SESS")
        digest = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}.get(name)
        if digest is None:
            raise StreamEnded(
                f"the camera asks for Digest authentication with {algorithm}, which watchkeep "
                "does not speak (MD5 and SHA-256); fix: choose Basic or MD5 Digest in the "
                "camera's settings"
            )

        def h(text: str) -> str:
            return digest(text.encode("utf-8")).hexdigest()

        realm, nonce = params.get("realm", ""), params.get("nonce", "")
        ha1 = h(f"{self.user}:{realm}:{self.password}")
        cnonce = os.urandom(8).hex()
        if algorithm.upper().endswith("-SESS"):
            ha1 = h(f"{ha1}:{nonce}:{cnonce}")
        ha2 = h(f"{method}:{url}")
        qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
        fields = [
            f'username="{self.user}"',
            f'realm="{realm}"',
            f'nonce="{nonce}"',
            f'uri="{url}"',
        ]
        if "auth" in qops:
            self.count += 1
            nc = f"{self.count:08x}"
            response = h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
            fields += ["qop=auth", f"nc={nc}", f'cnonce="{cnonce}"']
        else:
            response = h(f"{ha1}:{nonce}:{ha2}")
        fields.append(f'response="{response}"')
        if "algorithm" in params:
            fields.append(f"algorithm={algorithm}")
        if "opaque" in params:
            fields.append(f'opaque="{params["opaque"]}"')
        return "Digest " + ", ".join(fields)


_AUTH_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))\s*,?')


def _auth_params(text: str) -> dict[str, str]:
    return {
        m[1].lower(): (m[2].replace('\\"', '"') if m[2] is not None else m[3])
        for m in _AUTH_PARAM.finditer(text)
    }
