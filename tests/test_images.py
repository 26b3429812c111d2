"""The images stage against a real HTTP server on 127.0.0.1 (no network beyond loopback)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import ValidationError

from alien_hotels.images.collect import collect_images
from alien_hotels.images.fetch import Downloader, FetchError
from alien_hotels.images.prepare import EXTENSION_FORMAT, prepare_image
from alien_hotels.testing.imageserver import ImageServer, make_image, self_signed_cert
from conftest import compose

# path on the server -> (status, reason) the downloader must record
CASES = {
    "/good/10.jpg": ("ok", ""),
    "/good/11.png": ("ok", ""),
    "/flaky.jpg": ("ok", ""),  # 500, 500, then the image: retried with backoff
    "/moved.jpg": ("ok", ""),  # one redirect
    "/octet.jpg": ("ok", ""),  # a generic content type: the bytes decide
    "/missing.jpg": ("failed", "http_404"),
    "/error.jpg": ("failed", "http_500"),  # retries exhausted
    "/slow.jpg": ("failed", "timeout"),
    "/truncated.jpg": ("failed", "corrupt_image"),
    "/html.jpg": ("failed", "not_an_image"),
    "/page.html": ("failed", "not_image_content_type"),
    "/bomb.png": ("failed", "too_many_pixels"),  # PIL's own bomb check
    "/big.png": ("failed", "too_many_pixels"),  # our max_pixels, from the header
    "/loop.jpg": ("failed", "too_many_redirects"),
    "/huge.jpg": ("failed", "too_large"),
}

CFG = compose().images.updated(
    download=True,
    workers=4,
    connect_timeout_s=2.0,
    read_timeout_s=0.5,
    retries=2,
    backoff_s=0.01,
    max_redirects=3,
    max_bytes=5_000_000,
    allow_private_addresses=True,  # the test server is on loopback
)


def _sample(urls: list[str]) -> pd.DataFrame:
    n = len(urls)
    return pd.DataFrame(
        {
            "image_id": range(100, 100 + n),
            "hotel_id": 7,
            "url": urls,
            "source": "travel_website",
            "chain_id": 3,
            "image_name": [
                f"{100 + i}.{'png' if u.endswith('.png') else 'jpg'}" for i, u in enumerate(urls)
            ],
        }
    )


@pytest.fixture
def server():
    with ImageServer(slow_seconds=2.0, flaky_failures=2) as srv:
        yield srv


def test_downloader_records_every_failure_and_resumes(server: ImageServer, tmp_path: Path):
    paths = list(CASES)
    sample = _sample([server.url(p) for p in paths])
    out = tmp_path / "images"

    manifest, metrics = collect_images(sample, CFG, None, out, progress=False)

    got = {p: (row.status, row.reason) for p, row in zip(paths, manifest.itertuples(), strict=True)}
    assert got == CASES
    assert list(manifest["image_id"]) == list(sample["image_id"])  # sample order kept
    assert metrics["requested"] == len(CASES)
    assert metrics["ok"] == metrics["ok_downloaded"] == 5
    assert metrics["failed"] == len(CASES) - 5
    assert metrics["failed_by_reason"]["too_many_pixels"] == 2
    assert server.hits["/flaky.jpg"] == 3  # two 500s retried, then success
    assert server.hits["/error.jpg"] == CFG.retries + 1
    assert server.hits["/missing.jpg"] == 1  # a 404 is not retried

    # Good images are on disk in the dataset's layout, resized to a longer side of 640.
    ok = manifest[manifest["status"] == "ok"]
    files = {Path(p) for p in ok["path"]}
    assert files == {p for p in out.rglob("*") if p.is_file()}
    sizes = {}
    for path in files:
        assert path.relative_to(out).parts[:3] == ("3", "7", "travel_website")
        with Image.open(path) as img:
            img.load()
            sizes[path.name] = (img.format, img.size)
    assert sizes["100.jpg"] == ("JPEG", (640, 480))  # 800x600 shrunk
    assert sizes["101.png"] == ("PNG", (640, 427))  # 450x300 enlarged, as the dataset did
    assert all(max(size) == 640 for _fmt, size in sizes.values())

    # A second run fetches nothing that is already there; files are untouched.
    before = {p: p.stat().st_mtime_ns for p in files}
    hits = server.hits.copy()
    manifest2, metrics2 = collect_images(sample, CFG, None, out, progress=False)
    assert metrics2["ok_cached"] == 5 and metrics2["ok_downloaded"] == 0
    for path in [p for p, (status, _) in CASES.items() if status == "ok"] + ["/moved-target/7.jpg"]:
        assert server.hits[path] == hits[path], path
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert manifest2[["image_id", "path", "status"]].equals(
        manifest[["image_id", "path", "status"]]
    )


def test_local_tree_first_then_download_and_offline_default(server: ImageServer, tmp_path: Path):
    local = tmp_path / "tree"
    good = local / "3" / "7" / "travel_website" / "100.jpg"
    good.parent.mkdir(parents=True)
    good.write_bytes(make_image(4, size=(640, 400)))
    broken = local / "3" / "7" / "travel_website" / "101.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    sample = _sample([server.url("/missing.jpg"), server.url("/good/12.jpg"), server.url("/x.jpg")])

    # Offline (the bundled default): local image kept as is, the others missing or failed.
    offline = compose().images
    manifest, metrics = collect_images(sample, offline, local, tmp_path / "a", progress=False)
    assert list(manifest["status"]) == ["ok", "failed", "missing"]
    assert list(manifest["reason"]) == ["", "local_not_an_image", "not_in_local_tree"]
    assert Path(manifest["path"][0]).read_bytes() == good.read_bytes()  # no needless re-encode
    assert sum(server.hits.values()) == 0  # nothing touched the network
    assert metrics["ok_local"] == 1 and metrics["download_enabled"] is False

    # Downloading on: the local image still wins over its (404) URL; a broken one is re-fetched.
    manifest, metrics = collect_images(sample, CFG, local, tmp_path / "b", progress=False)
    assert list(manifest["status"]) == ["ok", "ok", "failed"]
    assert metrics["ok_local"] == 1 and metrics["ok_downloaded"] == 1
    assert server.hits["/missing.jpg"] == 0


def test_a_local_photo_that_cannot_be_read_is_a_failure_row(
    server: ImageServer, tmp_path: Path, monkeypatch
):
    """Permission denied or an I/O error on one photo fails that row, not the run (as root a
    chmod 000 file is still readable, so the read itself raises here)."""
    local = tmp_path / "tree"
    for name in ("100.jpg", "101.jpg"):
        photo = local / "3" / "7" / "travel_website" / name
        photo.parent.mkdir(parents=True, exist_ok=True)
        photo.write_bytes(make_image(4))
    read_bytes = Path.read_bytes

    def denied(path: Path) -> bytes:
        if path.name == "101.jpg":
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    sample = _sample([server.url("/a.jpg"), server.url("/b.jpg")])
    manifest, metrics = collect_images(sample, compose().images, local, tmp_path / "out")
    assert list(manifest["status"]) == ["ok", "failed"]
    assert list(manifest["reason"]) == ["", "local_unreadable"]
    assert metrics["failed_by_reason"] == {"local_unreadable": 1}


def test_stale_files_of_an_earlier_sample_are_removed(server: ImageServer, tmp_path: Path):
    out = tmp_path / "images"
    collect_images(
        _sample([server.url("/good/1.jpg"), server.url("/good/2.jpg")]),
        CFG,
        None,
        out,
        progress=False,
    )
    manifest, _ = collect_images(
        _sample([server.url("/good/1.jpg")]), CFG, None, out, progress=False
    )
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["100.jpg"]
    assert list(manifest["status"]) == ["ok"]


def test_tls_verification_has_no_switch():
    with pytest.raises(ValidationError, match="verify_tls"):
        compose().images.updated(verify_tls=False)


def test_https_goes_through_tls(server: ImageServer):
    # An https URL to a plain-http server must fail in the TLS handshake, not fall back to http.
    downloader = Downloader(CFG.model_copy(update={"retries": 0}))
    with pytest.raises(FetchError, match="tls_error"):
        downloader.get(f"https://127.0.0.1:{server.port}/good/1.jpg")
    with pytest.raises(FetchError, match="bad_url"):
        downloader.get("file:///etc/passwd")


def test_untrusted_certificate_is_refused_unless_its_ca_is_given(tmp_path: Path):
    cert, key = self_signed_cert(tmp_path)
    with ImageServer(tls=(cert, key)) as https:
        url = https.url("/good/20.jpg")
        with pytest.raises(FetchError, match="tls_error"):
            Downloader(CFG.model_copy(update={"retries": 0})).get(url)
        assert https.hits[("/good/20.jpg")] == 0  # refused before any request was sent
        trusted = Downloader(CFG.model_copy(update={"ca_bundle": str(cert)}))
        assert trusted.get(url) == make_image(20)


def test_prepare_image_respects_exif_orientation_and_formats():
    img = Image.new("RGB", (800, 400), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", exif=exif.tobytes())
    out = prepare_image(buffer.getvalue(), "jpg", compose().images)
    with Image.open(io.BytesIO(out)) as result:
        assert result.size == (320, 640)  # upright, longer side 640
    gif = io.BytesIO()
    img.save(gif, format="GIF")
    with pytest.raises(FetchError, match="unsupported_format"):
        prepare_image(gif.getvalue(), "jpg", compose().images)


def test_a_phone_mpo_is_taken_as_its_first_jpeg():
    """Phones write MPO (a JPEG, then a preview or depth map): accepted where JPEG is, stored
    as a plain JPEG of the first picture, at the stage's size (so drafted like a JPEG)."""
    photo, depth = Image.new("RGB", (1600, 1200), "red"), Image.new("RGB", (1600, 1200), "blue")
    buffer = io.BytesIO()
    photo.save(buffer, format="MPO", save_all=True, append_images=[depth])
    with Image.open(io.BytesIO(buffer.getvalue())) as mpo:
        assert (mpo.format, mpo.n_frames) == ("MPO", 2)
    out = prepare_image(buffer.getvalue(), "jpg", compose().images)
    with Image.open(io.BytesIO(out)) as stored:
        assert (stored.format, stored.size) == ("JPEG", (640, 480))
        assert getattr(stored, "n_frames", 1) == 1
        assert np.abs(np.asarray(stored, dtype=int) - (255, 0, 0)).max() <= 3


def test_images_metrics_are_json(server: ImageServer, tmp_path: Path):
    _, metrics = collect_images(
        _sample([server.url("/good/1.jpg")]), CFG, None, tmp_path, progress=False
    )
    assert json.loads(json.dumps(metrics))["ok"] == 1


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def _two_halves(mode: str, left, right, size=(320, 200)) -> Image.Image:
    img = Image.new(mode, size, left)
    img.paste(right, (size[0] // 2, 0, *size))
    return img


@pytest.mark.parametrize(
    ("img", "fmt", "extension", "left", "right"),
    [
        # 16-bit grayscale: 16448 / 257 = 64, not clipped to white
        (_two_halves("I;16", 16448, 65535), "PNG", "jpg", 64, 255),
        (_two_halves("I;16", 16448, 65535, (640, 400)), "PNG", "png", 64, 255),
        # transparent pixels (black underneath) composited on white, not dropped to black
        (_two_halves("RGBA", (0, 0, 0, 255), (0, 0, 0, 0)), "PNG", "jpg", 0, 255),
        (_two_halves("LA", (0, 255), (0, 0), (640, 400)), "PNG", "png", 0, 255),
        (_two_halves("CMYK", (0, 0, 0, 255), (0, 0, 0, 0), (640, 400)), "JPEG", "jpg", 0, 255),
    ],
    ids=["16bit-to-jpeg", "16bit-png-kept-size", "rgba-to-jpeg", "la-png", "cmyk-jpeg"],
)
def test_stored_images_are_what_the_loader_sees(img, fmt, extension, left, right):
    out = prepare_image(_encoded(img, fmt), extension, compose().images)
    with Image.open(io.BytesIO(out)) as stored:
        assert stored.format == EXTENSION_FORMAT[extension]
        assert stored.mode == "RGB" and stored.size == (640, 400)
        arr = np.asarray(stored, dtype=int)
    assert np.abs(arr[:, :300] - left).max() <= 3
    assert np.abs(arr[:, 340:] - right).max() <= 3


def test_one_selector_for_the_manifest_rows_with_images():
    from alien_hotels.tables import usable_images

    manifest = pd.DataFrame(
        {
            "image_id": [1, 2, 3, 4, 4, 5, 6],
            "path": [" a.png", None, "c.png", "d.png", "d2.png", "e.png", ""],
            "status": ["ok", "ok", "failed", "ok", "ok", "ok", None],
        }
    )
    every = usable_images(manifest)
    assert every.rows["image_id"].tolist() == [1, 4, 5]  # manifest order, first row per id
    assert every.rows["path"].tolist() == ["a.png", "d.png", "e.png"]
    assert every.skipped == {"failed": 1, "ok_without_path": 1, "unknown": 1}
    assert usable_images(manifest, limit=2).rows["image_id"].tolist() == [1, 4]


def test_a_killed_write_in_the_images_folder_is_removed_on_the_next_run(tmp_path: Path):
    local = tmp_path / "tree" / "3" / "7" / "travel_website"
    local.mkdir(parents=True)
    (local / "100.jpg").write_bytes(make_image(4, size=(640, 400)))
    out = tmp_path / "images"
    leftover = out / "3" / "7" / "travel_website" / ".100.jpg.x1y2z3w4.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"")  # what a SIGKILL inside common.atomic_path leaves
    sample = _sample(["http://127.0.0.1:9/100.jpg"])
    manifest, _ = collect_images(sample, compose().images, tmp_path / "tree", out, progress=False)
    assert list(manifest["status"]) == ["ok"]
    assert [p.name for p in out.rglob("*") if p.is_file()] == ["100.jpg"]


class _CountingServer:
    """A keep-alive server that records the client port of every request: `/img/<n>` is an
    image, `/short` declares more bytes than it sends, `/rel` redirects with a relative path."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.ports: list[int] = []
        self.paths: list[str] = []  # as asked: absolute `http://host/...` when sent to a proxy
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.ports.append(self.client_address[1])
                server.paths.append(self.path)
                if self.path == "/rel":
                    self.send_response(302)
                    self.send_header("Location", "img/31")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = make_image(int(self.path.rsplit("/", 1)[-1]) if "img" in self.path else 1)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path == "/short":
                    self.wfile.write(body[:100])
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> _CountingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_connections_are_reused_and_a_short_body_is_incomplete():
    downloader = Downloader(CFG.updated(retries=0))
    with _CountingServer() as srv:
        for n in range(5):
            assert downloader.get(srv.url(f"/img/{n}")) == make_image(n)
        assert len(srv.ports) == 5 and len(set(srv.ports)) == 1  # one keep-alive connection
        # A relative redirect is resolved against the URL asked for, on the same connection.
        assert downloader.get(srv.url("/rel")) == make_image(31)
        assert len(srv.ports) == 7 and len(set(srv.ports)) == 1
        # The connection ends before Content-Length bytes: recorded, not kept as an image.
        with pytest.raises(FetchError, match="incomplete_body"):
            downloader.get(srv.url("/short"))
        assert downloader.get(srv.url("/img/7")) == make_image(7)  # a new connection after it


def test_resizing_is_deterministic_and_does_not_alias():
    cfg = compose().images
    # One-pixel stripes, shrunk 1000 -> 640: an antialiasing filter averages them to grey; a
    # point-sampling one (nearest, or OpenCV's default linear, std 73) shows bands of black and
    # white. Ours: std 12 (img2dataset's area averaging: 30, Pillow's Hamming 47, box 84).
    stripes = np.zeros((750, 1000, 3), np.uint8)
    stripes[:, ::2] = 255
    data = _encoded(Image.fromarray(stripes), "PNG")
    out = prepare_image(data, "png", cfg)
    assert prepare_image(data, "png", cfg) == out  # same bytes in, same bytes out
    with Image.open(io.BytesIO(out)) as shrunk:
        assert shrunk.size == (640, 480)
        arr = np.asarray(shrunk, dtype=float)[:, 8:-8]  # the edges see one side only
    assert abs(arr.mean() - 127.5) < 3 and arr.std() < 20, (arr.mean(), arr.std())
    point = np.asarray(Image.fromarray(stripes).resize((640, 480), Image.Resampling.NEAREST))
    assert point[:, 8:-8].std() > 100  # the test would catch aliasing
    # Enlarging a smooth gradient stays smooth (no ringing beyond a few levels) and exact-size.
    ramp = np.tile(np.linspace(0, 255, 320).astype(np.uint8), (240, 1))
    big = prepare_image(_encoded(Image.fromarray(ramp).convert("RGB"), "PNG"), "png", cfg)
    with Image.open(io.BytesIO(big)) as enlarged:
        assert enlarged.size == (640, 480)
        row = np.asarray(enlarged.convert("L"), dtype=int)[240, 8:-8]
    assert np.all(np.diff(row) >= -1)


def test_environment_proxies_only_without_the_address_check(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    with _CountingServer() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url(""))
        monkeypatch.setenv("no_proxy", "localhost")
        mirror = Downloader(CFG.updated(retries=0))  # allow_private_addresses: the check is off
        assert mirror.get("http://images.invalid/img/3") == make_image(3)  # no DNS here
        assert proxy.paths == ["http://images.invalid/img/3"]  # the proxy was asked for it
        # With the check on (the default), the environment's proxy is not used: the URL is
        # judged by its own address (loopback here: refused, nothing sent anywhere).
        strict = Downloader(CFG.updated(retries=0, allow_private_addresses=False))
        with pytest.raises(FetchError, match="blocked_address"):
            strict.get(proxy.url("/img/4"))
        assert len(proxy.paths) == 1
        # A host in NO_PROXY is fetched directly (origin-form request line, not a proxy's).
        direct = proxy.url("/img/5").replace("127.0.0.1", "localhost")
        assert mirror.get(direct) == make_image(5)
        assert proxy.paths[-1] == "/img/5"
