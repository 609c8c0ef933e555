"""Test media made on the spot: encoded images and videos, and a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import http.server
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import av
import numpy as np
from PIL import Image


def encode_image(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def data_url(data: bytes, mime_type: str = "image/png") -> str:
    return f"data:{mime_type};base64,{base64.b64encode(data).decode('ascii')}"


def random_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def frame_with_index(index: int, width: int, height: int) -> np.ndarray:
    """An RGB frame whose red channel is the frame index mod 256, so that decoded frames tell their index."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[:, :, 0] = index % 256
    frame[:, :, 1] = (index // 256) % 256
    frame[:, :, 2] = 200
    return frame


def encode_video(num_frames: int, width: int, height: int, fps: int = 30, container: str = "mp4",
                 codec: str = "libx264", frame: Callable[[int, int, int], np.ndarray] = frame_with_index) -> bytes:
    """Encode `num_frames` frames with PyAV.

    Codec "png" in container "mov" is lossless, so decoded frames equal the input exactly.
    libx264 (in "mp4") and libvpx-vp9 (in "webm") are lossy and store 4:2:0 chroma.
    """
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "rgb24" if codec == "png" else "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        for index in range(num_frames):
            video_frame = av.VideoFrame.from_ndarray(frame(index, width, height), format="rgb24")
            for packet in stream.encode(video_frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def encode_audio_only(seconds: float = 0.5, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="wav") as output:
        stream = output.add_stream("pcm_s16le", rate=rate)
        samples = np.zeros((1, int(seconds * rate)), dtype=np.int16)
        audio = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        audio.sample_rate = rate
        for packet in stream.encode(audio):
            output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


@dataclass
class Route:
    """What the test server sends for one path."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Send the body in pieces of this many bytes with this delay between them (slow-server tests).
    drip_bytes: int = 0
    drip_delay_s: float = 0.0
    # Send the body with chunked transfer encoding and no Content-Length.
    chunked: bool = False


@dataclass
class LocalServer:
    base_url: str
    port: int
    routes: dict[str, Route]
    requests: list[str]


@contextmanager
def local_http_server(routes: dict[str, Route]) -> Iterator[LocalServer]:
    """Serve `routes` on 127.0.0.1 at a free port for the duration of the block, recording request paths."""
    requests: list[str] = []
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
            requests.append(self.path)
            route = routes.get(self.path, Route(status=404, body=b"not found"))
            self.send_response(route.status)
            for name, value in route.headers.items():
                self.send_header(name, value)
            if route.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            elif "Content-Length" not in route.headers:
                self.send_header("Content-Length", str(len(route.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self._send_body(route)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _send_body(self, route: Route) -> None:
            step = route.drip_bytes or len(route.body) or 1
            for start in range(0, len(route.body), step):
                if stop.is_set():
                    return
                piece = route.body[start:start + step]
                if route.chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    self.wfile.write(piece)
                self.wfile.flush()
                if route.drip_delay_s:
                    time.sleep(route.drip_delay_s)
            if route.chunked:
                self.wfile.write(b"0\r\n\r\n")

        def log_message(self, format: str, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield LocalServer(base_url=f"http://127.0.0.1:{port}", port=port, routes=routes, requests=requests)
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
