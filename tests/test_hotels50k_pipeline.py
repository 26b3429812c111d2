"""End to end: `dvc exp run -S data=hotels50k` samples synthetic metadata, fetches images from a
loopback HTTP server (resumably) and feeds the text half (synthetic precomputed captions)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from alien_hotels.datagen.hotels50k import generate
from alien_hotels.testing.imageserver import ImageServer
from conftest import run

pytestmark = pytest.mark.slow


def test_exp_run_hotels50k_samples_and_fetches(project: Path):
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    with ImageServer() as server:
        generate(
            project / "data/raw/hotels50k",
            rows=20_000,
            hotels=400,
            chains=6,
            seed=3,
            base_url=server.url(""),
            captions=True,
        )
        run(["dvc", "commit", "-f", "-q", "data.dvc"], project)
        run([*git, "commit", "-qam", "synthetic Hotels-50K metadata"], project)

        exp = ["dvc", "exp", "run", "-S", "data=hotels50k", "-S", "data.n_hotels=3"]
        exp += ["-S", "data.caption_column=description"]  # the synthetic captions
        exp += ["-S", "images.allow_private_addresses=true"]  # the server is on loopback
        # Up to the map: the edit stages would need Stable Diffusion weights for these photos.
        run([*exp, "map"], project)
        sample = pd.read_csv(project / "data/interim/sample.csv")
        manifest = pd.read_csv(project / "data/interim/images.csv", keep_default_na=False)
        metrics = json.loads((project / "metrics/images.json").read_text())
        assert sample["hotel_id"].nunique() == 3
        assert list(manifest["image_id"]) == list(sample["image_id"])
        assert (manifest["status"] == "ok").all() and metrics["ok_downloaded"] == len(sample)
        assert sum(server.hits.values()) == len(sample)
        for path in manifest["path"]:
            assert (project / path).is_file() and path.startswith("data/images/")
        clusters = pd.read_csv(project / "data/processed/clusters.csv")
        assert set(clusters["image_id"]) == set(sample["image_id"])  # the text half ran on it
        assert (project / "reports/cluster_map.html").is_file()

        # Same experiment again: DVC skips it (or the stage finds every file in place).
        run([*exp, "--force", "images"], project)
        assert sum(server.hits.values()) == len(sample)
        again = json.loads((project / "metrics/images.json").read_text())
        assert again["ok_cached"] == len(sample)
