#!/usr/bin/env python3
"""An RTSP camera for linesight's RTSP source tests.

Serves GStreamer's test video as H.264 (or MJPEG) over RTSP on 127.0.0.1 (GStreamer's RTSP server library
through PyGObject: Debian's python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-ugly
for x264enc; scripts/test installs them). Prints "ready" once it listens, then serves until it
is killed.

    python3 tests/rtsp/serve.py --port 8554 --path /cam --width 320 --height 240 --fps 25
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/cam")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--user", help="require RTSP basic authentication with this user")
    parser.add_argument("--password", default="")
    parser.add_argument("--codec", choices=["h264", "jpeg"], default="h264")
    parser.add_argument(
        "--audio", action="store_true", help="add an audio track before the video track"
    )
    parser.add_argument(
        "--second-video",
        action="store_true",
        help="add a second video track (plain red) after the first (SMPTE bars)",
    )
    args = parser.parse_args()
    if not 1 <= args.fps <= 120:
        parser.error(f"--fps {args.fps}: must be between 1 and 120")

    Gst.init(None)
    tracks = []
    if args.audio:
        tracks.append("audiotestsrc is-live=true ! alawenc ! rtppcmapay name=pay{n} pt=8")
    patterns = ["smpte", "red"] if args.second_video else ["smpte"]
    for pattern in patterns:
        encode = {
            "h264": f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} "
            "! rtph264pay name=pay{n} pt=96",
            # RTP/JPEG carries 4:2:0 or 4:2:2 only.
            "jpeg": "videoconvert ! video/x-raw,format=I420 ! jpegenc quality=90 "
            "! rtpjpegpay name=pay{n} pt=26",
        }[args.codec]
        tracks.append(
            f"videotestsrc is-live=true pattern={pattern} "
            f"! video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1 "
            f"! {encode}"
        )
    launch = " ".join(track.format(n=n) for n, track in enumerate(tracks))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( {launch} )")
    factory.set_shared(True)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "camera-user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("camera-user", "media.factory.access", True)
        permissions.add_permission_for_role("camera-user", "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
