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


def _lines(stdout: str, prefix: str) -> list[dict]:
    return [
        json.loads(line[len(prefix) :]) for line in stdout.splitlines() if line.startswith(prefix)
    ]


@pytest.mark.slow
def test_bench_images_scale_fits_a_line_and_estimates_hotels50k(tmp_path):
    args = ["--scale", "40", "20", "--threads", "2", "--pictures", "5"]
    cmd = [sys.executable, "-m", "benchmarks.bench_images", *args]
    result = run(cmd, cwd=ROOT, TMPDIR=str(tmp_path))
    runs = _lines(result.stdout, "BENCH ")
    assert [(r["tool"], r["urls"]) for r in runs] == [("alien-hotels", 20), ("alien-hotels", 40)]
    for r in runs:  # every size is a real run of the stage
        assert (
            r["failed"] == r["expected_failures"]
            and r["files"] == r["ok"] == r["urls"] - r["failed"]
        )
        assert r["cpu_s"] == pytest.approx(r["cpu_user_s"] + r["cpu_system_s"])
    [scale] = _lines(result.stdout, "SCALE ")
    assert scale["sizes"] == [20, 40]
    for key in ("call_s", "cpu_s", "peak_rss_mb"):
        fit = scale["fits"][key]
        # Two points: the line goes through both, so the slope is their difference per URL.
        a, b = (r[key] for r in runs)
        assert fit["per_url"] == pytest.approx((b - a) / 20)
        assert fit["at_hotels50k"] == pytest.approx(b + fit["per_url"] * (1_124_215 - 40))
    assert "linear at 1,124,215" in result.stdout
    # One size is not a line.
    bad = run([*cmd[:3], "--scale", "20"], cwd=ROOT, check=False, TMPDIR=str(tmp_path))
    assert bad.returncode == 2 and "two or more" in bad.stderr


@pytest.mark.slow
def test_bench_images_baseline_runs_in_turn_with_repeats(tmp_path):
    # This checkout's own src as the "baseline": both rows are the same stage, run in turn.
    args = ["--urls", "30", "--threads", "2", "--pictures", "5", "--skip-img2dataset"]
    args += ["--repeat", "2", "--baseline-src", str(ROOT / "src")]
    result = run(
        [sys.executable, "-m", "benchmarks.bench_images", *args], cwd=ROOT, TMPDIR=str(tmp_path)
    )
    runs = _lines(result.stdout, "BENCH ")
    # In turn, the second repetition in reverse order (a drifting load favours neither).
    order = ["alien-hotels baseline", "alien-hotels"]
    assert [r["tool"] for r in runs] == order + order[::-1]
    failed = runs[0]["expected_failures"]
    assert {(r["ok"], r["failed"], r["files"]) for r in runs} == {
        (30 - failed, failed, 30 - failed)
    }
