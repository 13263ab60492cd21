"""A real RTSP server on loopback for the RTSP source test (GStreamer's gst-rtsp-server).

Runs under the system Python, which has PyGObject (Debian: python3-gi, gir1.2-gst-rtsp-server-1.0).
Serves a live moving test pattern as Motion-JPEG over RTP at rtsp://127.0.0.1:PORT/test.
Usage: python3 rtsp_server.py PORT [SECONDS]   (exits by itself after SECONDS, default 120)
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

port = int(sys.argv[1])
seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 120
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(str(port))
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=64,height=64,framerate=25/1,format=I420 "
    "! jpegenc quality=90 ! rtpjpegpay name=pay0 pt=26 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/test", factory)
server.attach(None)
loop = GLib.MainLoop()
GLib.timeout_add_seconds(seconds, loop.quit)
print("ready", flush=True)
loop.run()
