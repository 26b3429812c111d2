"""Stage `duplicates`: duplicate photos (exact, perceptual, embedding) and captions (text) of
the sample (duplicates.*); see `alien_hotels.duplicates` and docs/duplicates.md."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alien_hotels import duplicates
from alien_hotels.common import read_csv, write_csv, write_json
from alien_hotels.config import Params
from alien_hotels.duplicates import DuplicatesConfig
from alien_hotels.stages.paths import StagePaths
from alien_hotels.tables import read_manifest, usable_images

log = logging.getLogger("alien_hotels")


def run(params: Params, paths: StagePaths = StagePaths()) -> dict:
    cfg = params.duplicates
    vectors = None
    if cfg.embedding:  # CLIP image embeddings: the caption stage's model (embeddings.py)
        from alien_hotels import embeddings

        rows = pd.DataFrame(columns=["image_id", "path"])
        if paths.images_manifest.is_file():
            rows = usable_images(read_manifest(paths.images_manifest)).rows[["image_id", "path"]]
        if len(rows):
            found, matrix, _ = embeddings.image_embeddings(
                rows, params.caption, params.features.clip.batch_size
            )
            ids = rows.set_index(rows["image_id"].astype(str)).loc[found, "image_id"].tolist()
            vectors = (ids, matrix)
    return find(
        cfg,
        manifest=paths.images_manifest,
        sample=paths.sample,
        captions=paths.captions,
        out=paths.duplicates,
        metrics=paths.duplicates_metrics,
        embeddings=vectors,
    )


def find(
    cfg: DuplicatesConfig,
    *,
    manifest: Path = Path("data/interim/images.csv"),
    sample: Path = Path("data/interim/sample.csv"),
    captions: Path | None = Path("data/processed/captions.csv"),
    out: Path = Path("data/processed/duplicates.csv"),
    metrics: Path = Path("metrics/duplicates.json"),
    root: Path = Path("."),
    embeddings: tuple[Sequence[Any], np.ndarray] | None = None,
) -> dict:
    """Find the duplicates, write `out` (image_id, group, kind, distance) and `metrics`.

    `manifest`: the images stage's (no file: no photos, as the bundled sample); its paths are
    relative to `root`. `sample`: image_id -> hotel_id. `captions`: the text kind's input (None
    or no file: no text kind). `embeddings`: (image ids, L2-normalised vectors) for the
    embedding kind, computed by the caller (CLIP's image tower); None: that kind is skipped.
    """
    hotels = read_csv(sample, ["image_id", "hotel_id"], what="sample table", usecols=[])
    hotel_of = dict(zip(hotels["image_id"], hotels["hotel_id"], strict=True))
    checked: dict[str, int] = {}

    hashed = None
    if (cfg.exact or cfg.perceptual) and Path(manifest).is_file():
        rows = usable_images(read_manifest(manifest)).rows
        if len(rows):
            hashed = duplicates.hash_images(rows[["image_id", "path"]], cfg, root)
            for kind in ("exact", "perceptual"):
                if getattr(cfg, kind):
                    checked[kind] = len(hashed.image_ids)
    elif cfg.exact or cfg.perceptual:
        log.info("duplicates: no images manifest (%s): no photos to compare", manifest)

    if cfg.embedding:
        if embeddings is None:
            log.info("duplicates: no image embeddings given: the embedding kind is skipped")
        else:
            checked["embedding"] = len(embeddings[0])

    texts = None
    if cfg.text and captions is not None and Path(captions).is_file():
        table = read_csv(captions, ["image_id", "caption"], what="captions table", usecols=[])
        table = table.drop_duplicates("image_id")
        texts = (table["image_id"].tolist(), table["caption"].tolist())
        checked["text"] = len(table)

    found = duplicates.find_duplicates(cfg, hashed, texts, embeddings)
    failed = hashed.failed if hashed is not None else {}
    result = duplicates.duplicate_metrics(found, hotel_of, checked, failed)
    for kind in checked:
        log.info(
            "duplicates (%s): %d group(s), %d of %d images",
            kind,
            result[kind]["groups"],
            result[kind]["images_in_groups"],
            checked[kind],
        )
    write_csv(_typed(found), out)
    write_json(result, metrics)
    return result


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Integer image ids written as integers (the table holds them as Python objects)."""
    table = table.copy()
    for column in ("image_id", "group"):
        values = pd.to_numeric(table[column], errors="coerce")
        if len(values) and values.notna().all() and (values % 1 == 0).all():
            table[column] = values.astype(np.int64)
    return table
