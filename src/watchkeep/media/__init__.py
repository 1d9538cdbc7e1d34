"""Camera sources, frames, live fan-out, recording segments and their index, playback.

The stream path, end to end::

    camera (SyntheticCamera / MjpegCamera / RtspCamera) --Frame--> FrameHub --> live subscribers
                                               \\--> Recorder --> segments + index --> playback

A :class:`Frame` is immutable and shared: no stage copies the picture's bytes. MJPEG and
WebSocket output helpers build only the small headers around them. H.264 and H.265 frames
come with their fragmented MP4 header and init segment, made once as they arrive: the same
bytes are recorded, sent live and served as HLS byte ranges.
"""

from watchkeep.media._errors import InvalidPlaybackRange, RecordingDiskFull, UnknownCamera
from watchkeep.media._fmp4 import InitSegment
from watchkeep.media._frame import Frame, validate_camera_name
from watchkeep.media._hls import HlsSegment, hls_playlist, hls_segments
from watchkeep.media._hub import FrameHub, Subscription
from watchkeep.media._mjpeg_camera import MjpegCamera, MjpegCameraStats
from watchkeep.media._mjpeg_output import (
    DEFAULT_BOUNDARY,
    MJPEG_PART_END,
    mjpeg_content_type,
    mjpeg_part,
    mjpeg_part_head,
)
from watchkeep.media._multipart import MjpegPart, MultipartParser, boundary_from_content_type
from watchkeep.media._network_camera import NetworkCamera, NetworkCameraStats, redact_url
from watchkeep.media._recorder import Recorder, RecorderStats
from watchkeep.media._rtsp_camera import RtspCamera
from watchkeep.media._source import CameraSource
from watchkeep.media._source_config import (
    SOURCE_KINDS,
    redacted_source,
    source_for,
    source_problem,
)
from watchkeep.media._store_protocol import RepairReport, SegmentInfo
from watchkeep.media._synthetic import SyntheticCamera
from watchkeep.media._video_segment import VideoFile, read_video_file
from watchkeep.media._wire import (
    WS_HEADER_SIZE,
    WsFrameHeader,
    frame_from_ws_message,
    pack_ws_header,
    unpack_ws_header,
    ws_message,
)

__all__ = [
    "DEFAULT_BOUNDARY",
    "MJPEG_PART_END",
    "SOURCE_KINDS",
    "WS_HEADER_SIZE",
    "CameraSource",
    "Frame",
    "FrameHub",
    "HlsSegment",
    "InitSegment",
    "InvalidPlaybackRange",
    "MjpegCamera",
    "MjpegCameraStats",
    "MjpegPart",
    "MultipartParser",
    "NetworkCamera",
    "NetworkCameraStats",
    "Recorder",
    "RecorderStats",
    "RecordingDiskFull",
    "RepairReport",
    "RtspCamera",
    "SegmentInfo",
    "Subscription",
    "SyntheticCamera",
    "UnknownCamera",
    "VideoFile",
    "WsFrameHeader",
    "boundary_from_content_type",
    "frame_from_ws_message",
    "hls_playlist",
    "hls_segments",
    "mjpeg_content_type",
    "mjpeg_part",
    "mjpeg_part_head",
    "pack_ws_header",
    "read_video_file",
    "redact_url",
    "redacted_source",
    "source_for",
    "source_problem",
    "unpack_ws_header",
    "validate_camera_name",
    "ws_message",
]
