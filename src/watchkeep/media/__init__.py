"""Camera sources, frames, live fan-out, recording segments and their index, playback.

The stream path, end to end::

    camera (SyntheticCamera / MjpegCamera / RtspCamera) --Frame--> FrameHub --> live subscribers
                                               \\--> Recorder --> segments + index --> playback

A :class:`Frame` is immutable and shared: no stage copies the JPEG bytes. MJPEG and
WebSocket output helpers build only the small headers around them.
"""

from watchkeep.media._errors import InvalidPlaybackRange, RecordingDiskFull, UnknownCamera
from watchkeep.media._frame import Frame, validate_camera_name
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
    "WsFrameHeader",
    "boundary_from_content_type",
    "frame_from_ws_message",
    "mjpeg_content_type",
    "mjpeg_part",
    "mjpeg_part_head",
    "pack_ws_header",
    "redact_url",
    "redacted_source",
    "source_for",
    "source_problem",
    "unpack_ws_header",
    "validate_camera_name",
    "ws_message",
]
