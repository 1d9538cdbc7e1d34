"""An RTSP camera for the tests: GStreamer's RTSP server (gst-rtsp-server), an implementation
independent of watchkeep's, serving pipelines that end in GStreamer's RTP payloaders.

Run with Debian's python3 (python3-gi, gir1.2-gst-rtsp-server-1.0; requirements/debian.txt):

    /usr/bin/python3 gst_rtsp_server.py --address 127.0.0.1 \\
        --mount /cam "videotestsrc is-live=true ! ... ! rtpjpegpay name=pay0 pt=26" \\
        [--user U --password P --auth basic|digest] [--tls-cert F --tls-key F]

It prints ``ready PORT`` once it listens (port 0: one the system picks) and serves until
killed.
"""

from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mount", nargs=2, action="append", metavar=("PATH", "PIPELINE"))
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--auth", choices=("basic", "digest"), default="digest")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    auth = None
    if args.user or args.tls_cert:
        auth = GstRtspServer.RTSPAuth()
        server.set_auth(auth)
    if args.tls_cert:
        assert auth is not None
        auth.set_tls_certificate(Gio.TlsCertificate.new_from_files(args.tls_cert, args.tls_key))
    if args.user:
        assert auth is not None
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        if args.auth == "basic":
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        else:
            auth.add_digest(args.user, args.password, token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    for path, pipeline in args.mount or []:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(f"( {pipeline} )")
        factory.set_shared(True)
        if args.user:
            role = Gst.Structure.from_string(
                "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
            )[0]
            factory.add_role_from_structure(role)
        server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on {args.address}:{args.port}")
    print(f"ready {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
