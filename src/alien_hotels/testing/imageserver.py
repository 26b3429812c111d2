"""A real HTTP server on 127.0.0.1 serving good images and every kind of bad answer.

Used by the downloader tests and by the end-to-end check (`python -m
alien_hotels.testing.imageserver --port 8765` next to synthetic metadata generated with
`--base-url http://127.0.0.1:8765`). Routes:

* `/<anything>/<image_id>.jpg|.png`: a JPEG (PNG) drawn from the id, 800x600 or 450x300
* `/missing.jpg`: 404;  `/error.jpg`: always 500;  `/flaky.jpg`: 500 `flaky_failures` times,
  then the image;  `/slow.jpg`: the image after `slow_seconds`
* `/truncated.jpg`: the first half of a JPEG (with a matching Content-Length)
* `/html.jpg`: an HTML page sent as `image/jpeg`;  `/page.html`: HTML sent as `text/html`
* `/octet.jpg`: a JPEG sent as `binary/octet-stream`
* `/bomb.png`: a small PNG whose header declares 100000x100000 pixels;  `/big.png`: 9000x8000
* `/loop.jpg`: a redirect to itself;  `/moved.jpg`: a redirect to `/moved-target/7.jpg`
* `/huge.jpg`: declares a Content-Length of 1 GB
* `/drip.jpg?seconds=<s>`: declares 100 KB, then sends one byte a second; ends the
  connection after `seconds` (default 30), so the server never outlives a test. With
  `&chunked=1` the body is chunked and the byte a second is its first chunk-size line (`000...`:
  http.client reads up to 64 KB of it in one read)
* `/two-lengths.jpg`: an image with two different `Content-Length` headers
* `/blank/<image_id>.png?w=<w>&h=<h>&kind=grey16|rgba`: a black (transparent) PNG of that
  size, a few hundred KB however large (`blank_png`)
* `/busy/<image_id>.jpg?status=429&times=1&retry_after=2`: `status` (with `Retry-After:
  retry_after`, seconds, or `date+N` for an HTTP date N seconds ahead) the first `times`
  requests of that path, then an image
* `/go/<anything>?to=<url>`: a redirect to any URL
* any image route with `?robots=<value>` sends `X-Robots-Tag: <value>`, with `?delay=<s>` waits
  that long first

`hits` counts requests per path (without the query), so a test can prove that a second run
fetched nothing; `max_in_flight` is the most requests it served at once, `user_agents` the
User-Agent headers it saw.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import functools
import io
import re
import ssl
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

IMAGE_PATH = re.compile(r"^/(?:[\w.-]+/)*(\d+)\.(jpg|jpeg|png)$")


def make_image(seed: int, fmt: str = "JPEG", size: tuple[int, int] | None = None) -> bytes:
    """A deterministic picture: coloured bands that differ with `seed`."""
    from PIL import Image, ImageDraw

    if size is None:
        size = (800, 600) if seed % 2 == 0 else (450, 300)
    img = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    draw = ImageDraw.Draw(img)
    for i in range(0, size[0], 40):
        draw.rectangle([i, 0, i + 20, size[1]], fill=((i + seed) % 256, 120, 200 - i % 200))
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG declaring `width` x `height` with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@functools.cache
def blank_png(width: int, height: int, kind: str = "grey16") -> bytes:
    """A valid all-zero PNG, 16-bit grey or 8-bit RGBA: tiny on the wire, huge once decoded
    (7999x7999 is 142 KB / 267 KB and 128 MB / 256 MB of pixels). Compressed row by row, so
    making it takes no more memory than the file."""
    bit_depth, color_type, channels = {"grey16": (16, 0, 2), "rgba": (8, 6, 4)}[kind]

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    row = b"\x00" * (1 + width * channels)  # filter byte 0, then the pixels
    packer = zlib.compressobj(9)
    idat = [packer.compress(row) for _ in range(height)]
    idat.append(packer.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(idat))
        + chunk(b"IEND", b"")
    )


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself (trusted by nobody unless told)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up: fine
            super().handle_error(request, client_address)


class ImageServer:
    """`with ImageServer() as server: server.url("/good/1.jpg")` serves until the block ends."""

    def __init__(
        self,
        port: int = 0,
        slow_seconds: float = 3.0,
        flaky_failures: int = 2,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """`tls=(certfile, keyfile)` serves https (see `self_signed_cert`)."""
        self.slow_seconds = slow_seconds
        self.flaky_failures = flaky_failures
        self.hits: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        self.user_agents: set[str] = set()
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, tls))
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def _count(self, path: str) -> int:
        with self._lock:
            self.hits[path] += 1
            return self.hits[path]

    def _enter(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _send(
                self,
                status: int,
                body: bytes,
                ctype: str,
                length: int | None = None,
                headers: dict[str, str] | None = None,
            ):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                server._enter(1)
                try:
                    self._get()
                finally:
                    server._enter(-1)

            def _get(self) -> None:
                path, _, query = self.path.partition("?")
                args = {k: v[-1] for k, v in parse_qs(query).items()}
                n = server._count(path)
                server.user_agents.add(self.headers.get("User-Agent", ""))
                if path.startswith("/busy/") and n <= int(args.get("times", 1)):
                    after = args.get("retry_after", "1")
                    if after.startswith("date+"):
                        after = email.utils.formatdate(time.time() + float(after[5:]), usegmt=True)
                    status = int(args.get("status", 429))
                    return self._send(
                        status, b"later", "text/plain", headers={"Retry-After": after}
                    )
                if path.startswith("/go/"):
                    return self._redirect(args["to"])
                if path == "/missing.jpg":
                    return self._send(404, b"not found", "text/plain")
                if path == "/error.jpg":
                    return self._send(500, b"boom", "text/plain")
                if path == "/flaky.jpg":
                    if n <= server.flaky_failures:
                        return self._send(500, b"try again", "text/plain")
                    return self._send(200, make_image(3), "image/jpeg")
                if path == "/slow.jpg":
                    time.sleep(server.slow_seconds)
                    return self._send(200, make_image(5), "image/jpeg")
                if path == "/truncated.jpg":
                    data = make_image(8)
                    return self._send(200, data[: len(data) // 2], "image/jpeg")
                if path == "/html.jpg":
                    return self._send(200, b"<html><body>Not an image</body></html>", "image/jpeg")
                if path == "/octet.jpg":  # what S3 sends when nobody set a type
                    return self._send(200, make_image(9), "binary/octet-stream")
                if path == "/page.html":
                    return self._send(200, b"<html></html>", "text/html; charset=utf-8")
                if path == "/bomb.png":
                    return self._send(200, png_header_only(100_000, 100_000), "image/png")
                if path == "/big.png":
                    return self._send(200, png_header_only(9_000, 8_000), "image/png")
                if path == "/loop.jpg":
                    return self._redirect("/loop.jpg")
                if path == "/moved.jpg":
                    return self._redirect("/moved-target/7.jpg")
                if path == "/drip.jpg":  # 1 byte/s: only a wall-time deadline ends it
                    chunked = args.get("chunked") == "1"
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    if chunked:
                        self.send_header("Transfer-Encoding", "chunked")
                    else:
                        self.send_header("Content-Length", "100000")
                    self.end_headers()
                    stop = time.monotonic() + float(args.get("seconds", 30))
                    with contextlib.suppress(OSError):  # the client hung up
                        while time.monotonic() < stop:
                            self.wfile.write(b"0" if chunked else b"\xff")
                            self.wfile.flush()
                            time.sleep(1.0)
                    self.close_connection = True
                    return None
                if path == "/two-lengths.jpg":
                    body = make_image(12)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Content-Length", str(len(body) + 10))
                    self.end_headers()
                    self.wfile.write(body)
                    return None
                if path.startswith("/blank/") and path.endswith(".png"):
                    width, height = int(args.get("w", 64)), int(args.get("h", 64))
                    body = blank_png(width, height, args.get("kind", "grey16"))
                    return self._send(200, body, "image/png")
                if path == "/huge.jpg":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(10**9))
                    self.end_headers()
                    return None
                match = IMAGE_PATH.match(path)
                if match:
                    time.sleep(float(args.get("delay", 0)))
                    fmt = "PNG" if match.group(2) == "png" else "JPEG"
                    body = make_image(int(match.group(1)), fmt)
                    robots = {"X-Robots-Tag": args["robots"]} if "robots" in args else {}
                    return self._send(200, body, f"image/{fmt.lower()}", headers=robots)
                return self._send(404, b"no such route", "text/plain")

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server = ImageServer(port=args.port)
    print(f"serving images on {server.url('/')}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
