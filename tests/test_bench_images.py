"""Smoke test of `benchmarks/bench_images.py`: it runs our stage against its loopback server and
prints the figures (no timing is asserted: the numbers depend on the machine)."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT, run


@pytest.mark.slow
def test_bench_images_prints_our_figures(tmp_path):
    result = run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_images",
            "--urls",
            "50",
            "--threads",
            "2",
            "--pictures",
            "10",
            "--skip-img2dataset",
        ],
        cwd=ROOT,
        TMPDIR=str(tmp_path),
    )
    lines = [json.loads(line[6:]) for line in result.stdout.splitlines() if line[:6] == "BENCH "]
    assert [r["tool"] for r in lines] == ["alien-hotels"], result.stdout
    ours = lines[0]
    assert ours["urls"] == 50
    # Exactly the URLs the server's fixed plan answers with 404/500 fail (and are recorded);
    # every other image is fetched, resized and written.
    assert ours["failed"] == ours["expected_failures"]
    assert ours["files"] == ours["ok"] == 50 - ours["failed"]
    for key in ("images_per_s", "cpu_ms_per_image", "peak_rss_mb"):
        assert ours[key] > 0, key
    assert "img2dataset" not in {r["tool"] for r in lines}
