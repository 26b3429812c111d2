"""Hostile servers and images (issue 23, rows 7, 8 and 11): a body dripping one byte a second is
cut at `images.body_timeout_s` (`slow_body`); images that are small on the wire but huge once
decoded are refused from their header (`images.max_decode_bytes`), so eight at once stay under
2.5 GB; what is decoded is reduced without float64 copies; two `Content-Length`s are a
`bad_response`. Loopback servers only; every test lists its temporary root to show nothing was
written outside the output folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

import alien_hotels
from alien_hotels.config import compose_params
from alien_hotels.images.collect import collect_images
from alien_hotels.images.fetch import FetchError
from alien_hotels.images.prepare import prepare_image
from alien_hotels.testing.imageserver import ImageServer, blank_png, make_image
from conftest import ROOT, compose, url_sample

# The source tree under test (so the subprocesses run the same code as this process).
SRC = Path(alien_hotels.__file__).resolve().parents[1]
CFG = compose().images.updated(
    download=True,
    allow_private_addresses=True,  # the test server is on loopback
    connect_timeout_s=2.0,
    read_timeout_s=5.0,  # each read is well within it: only the body deadline can end a drip
    body_timeout_s=2.0,
    retries=0,
)
SIDE = 7999  # 7999 x 7999 = 63,984,001 pixels: under the default images.max_pixels (64 M)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _outside(root: Path, allowed: tuple[str, ...]) -> set[str]:
    """The files under `root` that are not under one of the `allowed` prefixes."""
    return {f for f in _files(root) if not f.startswith(allowed)}


@pytest.fixture
def server():
    with ImageServer() as srv:
        yield srv


# --- time (row 7) -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_dripping_one_byte_a_second_is_cut_at_the_deadline(server, tmp_path, chunked):
    # The server drips for 12 s and then hangs up by itself. Chunked, the drip is the chunk-size
    # line, which http.client reads in one call: only shutting the socket ends that read.
    url = server.url(f"/drip.jpg?seconds=12{'&chunked=1' if chunked else ''}")
    out = tmp_path / "data/images"
    start = time.monotonic()
    manifest, metrics = collect_images(url_sample([url]), CFG, None, out, progress=False)
    elapsed = time.monotonic() - start
    assert list(manifest["reason"]) == ["slow_body"]
    assert metrics["failed_by_reason"] == {"slow_body": 1}
    assert elapsed < CFG.body_timeout_s + 2, elapsed
    assert _files(tmp_path) == set()  # nothing kept, nothing written anywhere


# --- responses (row 11) -----------------------------------------------------------------------


def test_two_different_content_lengths_are_a_bad_response(server, tmp_path):
    out = tmp_path / "data/images"
    urls = [server.url("/two-lengths.jpg"), server.url("/good/2.jpg")]
    manifest, _ = collect_images(url_sample(urls), CFG, None, out, progress=False)
    assert list(manifest["reason"]) == ["bad_response", ""]
    assert len(_files(out)) == 1 and _outside(tmp_path, ("data/images/",)) == set()


# --- memory (row 8) ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["grey16", "rgba"])
def test_an_image_over_the_decode_budget_is_refused_from_its_header(kind):
    data = blank_png(SIDE, SIDE, kind)  # 16-bit grey 124 KB, RGBA 249 KB on the wire
    assert len(data) < 300_000
    start = time.monotonic()
    with pytest.raises(FetchError) as err:
        prepare_image(data, "png", CFG)
    assert err.value.reason == "too_large"
    assert "images.max_decode_bytes" in str(err.value)
    assert time.monotonic() - start < 0.5  # refused before decoding (a decode takes seconds)


def test_the_default_budget_fits_the_workers_in_2_gib_and_ordinary_photos():
    for group in ("offline", "download"):
        cfg = compose(f"images={group}").images
        assert cfg.workers * cfg.max_decode_bytes <= 2 << 30
    # A 21 MP photo (TraffickCam's largest) as a PNG is decoded as usual.
    out = prepare_image(make_image(1, "PNG", size=(5600, 3750)), "jpg", CFG)
    assert out[:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    ("key", "value"),
    [("longer_side", 4097), ("longer_side", 20000), ("workers", 33), ("workers", 64)],
)
def test_longer_side_and_workers_are_capped(key, value):
    with pytest.raises(ValidationError, match=key):
        CFG.updated(**{key: value})


def _peak_rss_mb(code: str) -> tuple[float, str]:
    """Run `code` in a fresh Python; its peak RSS (MB) and stdout.

    VmHWM, the peak of the process's own memory: `ru_maxrss` would start at the pytest process's
    peak, which Linux carries over into a child's count across fork and exec.
    """
    wrapped = (
        f"{code}\nimport re\n"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-c", wrapped], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    *lines, peak_kib = result.stdout.strip().splitlines()
    return int(peak_kib) / 1024, "\n".join(lines)


@pytest.mark.parametrize(("kind", "pixel"), [("grey16", (0, 0, 0)), ("rgba", (255, 255, 255))])
def test_16bit_and_rgba_images_decode_without_float64_copies(kind, pixel):
    # With the budget lifted, one 7999x7999 image: the old float64 and full-size RGBA copies
    # peaked at 1.8 GB (16-bit) and 1.3 GB (RGBA); now ~0.3 / 0.5 GB of pixels (an 8-bit copy
    # and the RGB result; the file's RGBA and the RGB) over the interpreter's ~0.14 GB.
    code = f"""
import io, sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from PIL import Image
from conftest import compose
from alien_hotels.images.prepare import prepare_image
from alien_hotels.testing.imageserver import blank_png
cfg = compose().images.updated(max_decode_bytes=1 << 32)
data = blank_png({SIDE}, {SIDE}, {kind!r})
out = Image.open(io.BytesIO(prepare_image(data, "png", cfg)))
print(out.mode, out.size, out.getpixel((5, 5)), out.getextrema())
"""
    peak, printed = _peak_rss_mb(code)
    assert printed == f"RGB (640, 640) {pixel} {tuple((v, v) for v in pixel)}"
    assert peak < 900, f"peak RSS {peak:.0f} MB"


def test_eight_huge_pngs_at_eight_workers_stay_under_2_5_gb(server, tmp_path):
    """The real `images` stage, in its own process, with the default limits and 8 workers."""
    root = tmp_path
    urls = [server.url(f"/blank/{i}.png?w={SIDE}&h={SIDE}&kind=grey16") for i in range(8)]
    urls.append(server.url("/good/4.jpg"))  # an ordinary photo among them
    overrides = [
        "images=download",
        "images.workers=8",
        "images.retries=0",
        "images.allow_private_addresses=true",
        f"data.images_dir={root / 'no-local-tree'}",
    ]
    params = compose_params(overrides, ROOT / "conf")
    assert params["images"]["workers"] == 8
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "data/interim").mkdir(parents=True)
    url_sample(urls).to_csv(root / "data/interim/sample.csv", index=False)
    inputs = _files(root)

    # A parent of its own, so RUSAGE_CHILDREN holds the stage's peak alone.
    code = f"""
import resource, subprocess, sys
stage = [sys.executable, "-m", "alien_hotels", "images", "--params", "params.yaml"]
result = subprocess.run(stage, cwd={str(root)!r})
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(result.returncode)
"""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    peak_mb = int(result.stdout.strip().splitlines()[-1]) / 1024
    assert peak_mb < 2500, f"peak RSS {peak_mb:.0f} MB"

    manifest = pd.read_csv(root / "data/interim/images.csv", keep_default_na=False)
    assert list(manifest["status"]) == ["failed"] * 8 + ["ok"]
    assert list(manifest["reason"]) == ["too_large"] * 8 + [""]
    metrics = json.loads((root / "metrics/images.json").read_text())
    assert metrics["requested"] == 9 and metrics["failed_by_reason"] == {"too_large": 8}
    written = _files(root) - inputs
    images = {f for f in written if f.startswith("data/images/")}
    # reports/skipped.csv: the failures by path and reason, for people
    assert written - images == {
        "data/interim/images.csv",
        "metrics/images.json",
        "reports/skipped.csv",
    }
    assert len(images) == 1 and manifest["path"][8] in images  # the ordinary photo alone
