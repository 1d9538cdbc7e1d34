"""Playback of H.264/H.265 recordings over HLS (RFC 8216, version 7): a playlist of
fMP4 segments that are byte ranges of the recording files, one per keyframe interval.

Nothing is copied or remuxed: each file's init segment is the playlist's ``EXT-X-MAP``, and
each segment the fragments from one keyframe up to the next, as the recorder wrote them.
A new file (a new init segment: parameter sets, size or connection changed) is a
discontinuity. Pure: the recording files are read by the caller.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from watchkeep.media._fmp4 import TIMESCALE, Fragment
from watchkeep.media._video_segment import VideoFile

__all__ = ["HlsSegment", "hls_playlist", "hls_segments"]


@dataclass(frozen=True)
class HlsSegment:
    """One keyframe interval of one file: its byte range and its times (UTC seconds)."""

    uri: str
    offset: int
    size: int
    start: float
    duration: float


def hls_segments(uri: str, video: VideoFile, start: float, end: float) -> list[HlsSegment]:
    """The keyframe intervals of ``video`` that hold pictures of ``[start, end)``, from
    the keyframe at or before ``start``."""
    fragments = video.fragments
    keys = [i for i, f in enumerate(fragments) if f.keyframe]
    found: list[HlsSegment] = []
    for number, first in enumerate(keys):
        last = keys[number + 1] if number + 1 < len(keys) else len(fragments)
        group = fragments[first:last]
        begin = group[0].presentation_time / TIMESCALE
        finish = _end_of(group, fragments[last] if last < len(fragments) else None)
        if finish <= start or begin >= end:
            continue
        size = group[-1].offset + group[-1].size - group[0].offset
        found.append(HlsSegment(uri, group[0].offset, size, begin, max(finish - begin, 0.001)))
    return found


def _end_of(group: list[Fragment], following: Fragment | None) -> float:
    if following is not None:
        return following.presentation_time / TIMESCALE
    last = max(group, key=lambda f: f.presentation_time)
    return (last.presentation_time + last.duration) / TIMESCALE


def hls_playlist(files: list[tuple[str, VideoFile, list[HlsSegment]]]) -> str:
    """The VOD playlist of ``files`` (URI, the file, its segments in range), in order."""
    durations = [s.duration for _, _, segments in files for s in segments]
    target = max(1, math.ceil(max(durations, default=1.0)))
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    first = True
    for uri, video, segments in files:
        if not segments:
            continue
        if not first:
            lines.append("#EXT-X-DISCONTINUITY")
        first = False
        lines.append(f'#EXT-X-MAP:URI="{uri}",BYTERANGE="{video.init_size}@0"')
        moment = dt.datetime.fromtimestamp(segments[0].start, dt.UTC)
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{moment.isoformat(timespec='milliseconds')}")
        for segment in segments:
            lines.append(f"#EXTINF:{segment.duration:.3f},")
            lines.append(f"#EXT-X-BYTERANGE:{segment.size}@{segment.offset}")
            lines.append(uri)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
