"""A camera's source as the site configures it (``{"kind": ..., ...}``): the kinds there
are, the source each makes, why one cannot work (checked where it is typed, not found
later in a recording server's log), and how it is shown (without its password)."""

from __future__ import annotations

from typing import Any

from watchkeep.errors import WatchkeepError
from watchkeep.media._frame import validate_camera_name
from watchkeep.media._mjpeg_camera import MjpegCamera
from watchkeep.media._network_camera import redact_url
from watchkeep.media._rtsp_camera import RtspCamera
from watchkeep.media._source import CameraSource
from watchkeep.media._synthetic import SyntheticCamera

__all__ = ["SOURCE_KINDS", "redacted_source", "source_for", "source_problem"]

SYNTHETIC_DEFAULTS = {"width": 640, "height": 360, "fps": 10.0, "target_bytes": 30_000}


def source_for(name: str, source: dict[str, Any]) -> CameraSource:
    kind = source.get("kind")
    if kind == "synthetic":
        values = {**SYNTHETIC_DEFAULTS, **{k: source[k] for k in SYNTHETIC_DEFAULTS if k in source}}
        return SyntheticCamera(
            name,
            int(values["width"]),
            int(values["height"]),
            float(values["fps"]),
            int(values["target_bytes"]),
        )
    if kind == "mjpeg":
        return MjpegCamera(name, str(source["url"]))
    if kind == "rtsp":
        return RtspCamera(name, str(source["url"]))
    raise WatchkeepError(
        f"camera {name}: unknown source kind {kind!r}", fix="use synthetic, mjpeg or rtsp"
    )


SOURCE_KINDS = ("synthetic", "mjpeg", "rtsp")


_URL_FORMS = {
    "mjpeg": "http[s]://[USER:PASSWORD@]HOST[:PORT]/PATH",
    "rtsp": "rtsp[s]://[USER:PASSWORD@]HOST[:PORT]/PATH",
}


def source_problem(name: str, source: object) -> tuple[str, str] | None:
    """Why a camera cannot be made of ``name`` and ``source``, and the fix (checked before
    it is stored, so that a typing error is refused where it is made, not logged later on
    a recording server); None if it can."""
    try:
        validate_camera_name(name)
    except WatchkeepError as exc:
        return exc.describe(), exc.fix or "rename the camera"
    kinds = ", ".join(SOURCE_KINDS)
    if not isinstance(source, dict) or source.get("kind") not in SOURCE_KINDS:
        return f"a camera's source is an object with kind {kinds}", f"give one of {kinds}"
    kind = source["kind"]
    if kind == "synthetic":
        return None
    url = source.get("url")
    fix = f"give the camera's URL as {_URL_FORMS[kind]}"
    if not isinstance(url, str):
        return f"the {kind} source of camera {name} has no url", fix
    try:
        source_for(name, source)
    except (WatchkeepError, ValueError) as exc:
        return f"camera {name}: {exc}", fix
    return None


def redacted_source(source: dict[str, Any]) -> dict[str, Any]:
    """``source`` with the password of its URL replaced by ``***`` (for status pages: a
    camera's password belongs to the recording server that pulls it, not to every user)."""
    url = source.get("url")
    if not isinstance(url, str):
        return source
    return {**source, "url": redact_url(url)}
