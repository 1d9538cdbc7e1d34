"""H.264 (ITU-T H.264) and H.265 (ITU-T H.265) bitstreams, as far as recording them
without decoding needs: NAL unit types, which access units start a picture that decodes
on its own (a keyframe), and what the sequence parameter set says of the picture's size
and profile (for the MP4 sample description and the browser's codec string).

Nothing here decodes a picture; the parser reads the first few dozen bits of an SPS.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CODECS",
    "BitstreamError",
    "ParameterSets",
    "StreamInfo",
    "is_keyframe_nal",
    "nal_type",
    "parameter_set_kind",
    "parse_sps",
]

#: The codecs recorded as the camera sends them, by their RTP encoding name.
CODECS = ("H264", "H265")

# H.264 NAL unit types (Table 7-1).
H264_IDR = 5
H264_SEI = 6
H264_SPS = 7
H264_PPS = 8
H264_AUD = 9
# H.265 NAL unit types (Table 7-1).
H265_IRAP = range(16, 24)  # BLA, IDR, CRA (and reserved IRAP types)
H265_VPS = 32
H265_SPS = 33
H265_PPS = 34
H265_AUD = 35

_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


class BitstreamError(ValueError):
    """A parameter set that cannot be read (truncated, or values out of range)."""


def nal_type(codec: str, nal: bytes | memoryview) -> int:
    """The type of NAL unit ``nal`` (its header included); -1 for an empty one."""
    if not nal:
        return -1
    if codec == "H264":
        return nal[0] & 0x1F
    return (nal[0] >> 1) & 0x3F


def is_keyframe_nal(codec: str, kind: int) -> bool:
    """Whether a NAL unit of type ``kind`` starts a picture that decodes on its own."""
    if codec == "H264":
        return kind == H264_IDR
    return kind in H265_IRAP


def parameter_set_kind(codec: str, kind: int) -> str | None:
    """ "vps", "sps" or "pps" for a parameter set's NAL type, else None."""
    if codec == "H264":
        return {H264_SPS: "sps", H264_PPS: "pps"}.get(kind)
    return {H265_VPS: "vps", H265_SPS: "sps", H265_PPS: "pps"}.get(kind)


def is_delimiter(codec: str, kind: int) -> bool:
    """An access unit delimiter: carries nothing an MP4 sample needs."""
    return kind == (H264_AUD if codec == "H264" else H265_AUD)


def nal_roles(codec: str) -> tuple[str | None, ...]:
    """What a NAL unit is to a recorder, by the value of its first byte (its type is in
    it): "vps", "sps" or "pps" (a parameter set), "delimiter", "key" (it starts a picture
    that decodes on its own), or None (the rest of a picture). A table, so that the framer
    looks each NAL unit up once instead of asking the functions above."""
    roles: list[str | None] = []
    for first in range(256):
        kind = nal_type(codec, bytes((first,)))
        role = parameter_set_kind(codec, kind)
        if role is None and is_delimiter(codec, kind):
            role = "delimiter"
        elif role is None and is_keyframe_nal(codec, kind):
            role = "key"
        roles.append(role)
    return tuple(roles)


@dataclass(frozen=True)
class StreamInfo:
    """What the SPS says: picture size, and the fields of the MP4 decoder configuration."""

    codec: str
    width: int
    height: int
    chroma_format: int
    bit_depth_luma: int
    bit_depth_chroma: int
    # H.264: profile_idc, constraint flags, level_idc (bytes 1-3 of the SPS).
    # H.265: general_profile_tier_level, the 12 bytes after the SPS's first byte.
    profile: bytes
    max_sub_layers: int = 1
    temporal_id_nesting: bool = True

    @property
    def mime_codec(self) -> str:
        """The codec string of RFC 6381 (``avc1.64001f``, ``hvc1.1.6.L93.B0``)."""
        if self.codec == "H264":
            return "avc1." + self.profile[:3].hex()
        ptl = self.profile
        space = "".join(("", "A", "B", "C")[ptl[0] >> 6])
        profile_idc = ptl[0] & 0x1F
        compat = int.from_bytes(ptl[1:5], "big")
        reversed_compat = int(f"{compat:032b}"[::-1], 2)
        tier = "H" if ptl[0] & 0x20 else "L"
        constraints = ptl[5:11].rstrip(b"\x00")
        parts = [f"hvc1.{space}{profile_idc}", f"{reversed_compat:X}", f"{tier}{ptl[11]}"]
        parts += [f"{b:X}" for b in constraints]
        return ".".join(parts)


@dataclass(frozen=True)
class ParameterSets:
    """The parameter sets of a stream at one moment (VPS for H.265 only)."""

    codec: str
    vps: bytes | None
    sps: bytes | None
    pps: bytes | None

    @property
    def complete(self) -> bool:
        return (
            self.sps is not None
            and self.pps is not None
            and (self.codec == "H264" or self.vps is not None)
        )

    def missing(self) -> str:
        names = ["VPS"] if self.codec == "H265" and self.vps is None else []
        names += [name for name, value in (("SPS", self.sps), ("PPS", self.pps)) if value is None]
        return "/".join(names)


class _Bits:
    """Reads bits of an RBSP (the emulation-prevention bytes removed)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def u(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self._pos >> 3
            if byte >= len(self._data):
                raise BitstreamError("the parameter set ends too soon")
            value = (value << 1) | ((self._data[byte] >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise BitstreamError("an Exp-Golomb code over 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)

    def skip(self, count: int) -> None:
        self._pos += count


def unescape(nal: bytes) -> bytes:
    """The RBSP of ``nal``: every 00 00 03 with its 03 removed."""
    if b"\x00\x00\x03" not in nal:
        return nal
    out = bytearray()
    zeros = 0
    for byte in nal:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def parse_sps(codec: str, sps: bytes) -> StreamInfo:
    """Read the picture size and profile from a sequence parameter set (header included)."""
    try:
        if codec == "H264":
            return _parse_h264_sps(unescape(sps))
        return _parse_h265_sps(unescape(sps))
    except IndexError as exc:
        raise BitstreamError("the parameter set ends too soon") from exc


def _parse_h264_sps(rbsp: bytes) -> StreamInfo:
    if len(rbsp) < 4:
        raise BitstreamError("an H.264 SPS of fewer than 4 bytes")
    bits = _Bits(rbsp[4:])
    profile_idc = rbsp[1]
    bits.ue()  # seq_parameter_set_id
    chroma_format, depth_luma, depth_chroma = 1, 8, 8
    if profile_idc in _HIGH_PROFILES:
        chroma_format = bits.ue()
        if chroma_format > 3:
            raise BitstreamError(f"chroma_format_idc {chroma_format}")
        if chroma_format == 3:
            bits.u(1)
        depth_luma = bits.ue() + 8
        depth_chroma = bits.ue() + 8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format != 3 else 12):
                if bits.u(1):
                    last, following = 8, 8
                    for _ in range(16 if index < 6 else 64):
                        if following:
                            following = (last + bits.se() + 256) % 256
                        last = following or last
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.u(1)
        bits.se()
        bits.se()
        for _ in range(min(bits.ue(), 255)):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.u(1)
    width_mbs = bits.ue() + 1
    height_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.u(1)
    bits.u(1)  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if bits.u(1):
        crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    unit_x = 1 if chroma_format in (0, 3) else 2
    unit_y = (2 - frame_mbs_only) * (2 if chroma_format == 1 else 1)
    width = width_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - unit_y * (crop[2] + crop[3])
    if not (0 < width <= 16384 and 0 < height <= 16384):
        raise BitstreamError(f"a picture of {width}x{height}")
    return StreamInfo("H264", width, height, chroma_format, depth_luma, depth_chroma, rbsp[1:4])


def _parse_h265_sps(rbsp: bytes) -> StreamInfo:
    if len(rbsp) < 15:
        raise BitstreamError("an H.265 SPS of fewer than 15 bytes")
    head = rbsp[2]
    max_sub_layers = ((head >> 1) & 7) + 1
    nesting = bool(head & 1)
    profile = rbsp[3:15]
    bits = _Bits(rbsp[15:])
    sub_layers = max_sub_layers - 1
    flags = [(bits.u(1), bits.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        bits.skip(2 * (8 - sub_layers))
    for profile_present, level_present in flags:
        bits.skip(88 * profile_present + 8 * level_present)
    bits.ue()  # sps_seq_parameter_set_id
    chroma_format = bits.ue()
    if chroma_format > 3:
        raise BitstreamError(f"chroma_format_idc {chroma_format}")
    if chroma_format == 3:
        bits.u(1)
    width = bits.ue()
    height = bits.ue()
    if bits.u(1):  # conformance_window_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        unit_x = 2 if chroma_format in (1, 2) else 1
        unit_y = 2 if chroma_format == 1 else 1
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    depth_luma = bits.ue() + 8
    depth_chroma = bits.ue() + 8
    if not (0 < width <= 16384 and 0 < height <= 16384):
        raise BitstreamError(f"a picture of {width}x{height}")
    return StreamInfo(
        "H265",
        width,
        height,
        chroma_format,
        depth_luma,
        depth_chroma,
        profile,
        max_sub_layers,
        nesting,
    )
