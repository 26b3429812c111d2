"""Smoke tests of the device scripts of issue 17 on CPU with the tiny test models: the GPU
profile, the chain cost model and gpu_check's python part run and print their sections and
figures (no timings are asserted)."""

from __future__ import annotations

import re
import sys

import pytest

from conftest import ROOT, run

pytestmark = [pytest.mark.ml, pytest.mark.slow]


def script(module: str, *args: str) -> str:
    cmd = [sys.executable, "-W", "ignore", "-m", f"benchmarks.{module}", "--device", "cpu"]
    return run([*cmd, "--tiny", *args], cwd=ROOT).stdout


NUMBER = r"-?\d+\.\d+"


def test_gpu_profile_prints_operators_and_the_step_split():
    out = script("gpu_profile", "--candidates", "32", "--images", "2", "--row-limit", "5")
    for regime in ("random", "planted"):
        assert f"-- top 5 operators by CPU time ({regime})" in out
        assert re.search(rf"band sizes \({regime}\): steps 4, fallbacks \d+, rescored \d+", out)
        split = out.split(f"-- step split ({regime})")[1]
        for name in ("chain.host", "chain.forward", "chain.transfer", "chain.band",
                     "chain.full_batch", "chain.single_prompt", "waits/syncs", "other",
                     "wall"):  # fmt: skip
            assert re.search(rf"^  {re.escape(name)} +{NUMBER}", split, re.M), name
    assert "aten::" in out  # the operator tables list real operators
    assert "operators by CUDA time" not in out  # CPU run: no CUDA activity


def test_chain_cost_model_forces_the_band_sizes():
    out = script("bench_chain_cost", "--candidates", "30", "--images", "1", "2",
                 "--bands", "0", "0.1", "1")  # fmt: skip
    row = (
        r"band +(\S+(?: batch)?) \(k= *(\d+)\) images +(\d+): +([\d.]+) CPU ms per step.*"
        r"rescored/image (\d+), fallbacks (\d+), full_batch (\d+)"
    )
    rows = re.findall(row, out)
    assert len(rows) == 8  # (none, 10%, all, full batch) x (1, 2 images)
    for label, k, images, ms, rescored, fallbacks, full in rows:
        assert float(ms) > 0
        if label == "full batch":
            assert (int(rescored), int(full)) == (2, int(images))
        else:  # the forced margin puts exactly the top k in the band (k=1: no band)
            assert int(rescored) == (0 if int(k) == 1 else int(k)) and int(full) == 0
            assert int(fallbacks) == (0 if int(k) == 1 else int(images))
    assert re.search(rf"cost model .*step = {NUMBER} \+ {NUMBER} x images", out)


def test_gpu_check_python_part_compares_strings_and_precisions():
    out = script("gpu_check", "--images", "2", "--batch", "2", "--candidates", "32",
                 "--min-steps", "2", "--steps", "3")  # fmt: skip
    assert re.search(rf"float16 \(weights\): max {NUMBER}e[-+]\d+ -> 4x", out)
    assert re.search(rf"float32 \(weights\): max {NUMBER}e[-+]\d+ -> 4x", out)
    for regime in ("random", "planted"):
        section = out.split(f"== regime {regime}")[1].split("==")[0]
        for part in ("caption", "image features", "label ranking", "chain", "total"):
            assert re.search(rf"^  {part} +{NUMBER} +{NUMBER} +{NUMBER}", section, re.M), part
        assert re.search(r"same strings as the library: batch 1 \d/2, batch 2 \d/2", section)
        assert re.search(r"batch 2: steps \d+, fallbacks \d+, rescored \d+ .* full_batch", section)
        floor = out.split(f"== float16 noise floor ({regime})")[1]
        assert re.search(r"library float16 = library float32: \d/2", floor)
        # The float32 contract: same captions and features give the library's strings.
        assert "ours float32 = library float32: 2/2" in floor
