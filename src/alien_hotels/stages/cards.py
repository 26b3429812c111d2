"""Stage `cards`: a montage of the photos nearest each cluster's centre (cards.*), after
`cluster`: `reports/clusters/<cluster>.jpg` (cached, drawn on the plots page) and their index
`reports/cluster_cards.md`, which is all a run without photos (the bundled sample) writes."""

from __future__ import annotations

import logging
from pathlib import Path

from alien_hotels import cards, features
from alien_hotels.common import write_json
from alien_hotels.config import Params
from alien_hotels.stages.paths import StagePaths
from alien_hotels.tables import read_manifest, usable_images

log = logging.getLogger("alien_hotels")


def run(params: Params, paths: StagePaths = StagePaths()) -> dict:
    counts = draw(
        params.cards,
        labels=paths.labels,
        terms=paths.cluster_terms,
        features_path=paths.features,
        manifest=paths.images_manifest,
        images_dir=paths.images_dir,
        out_dir=paths.cards_dir,
        index=paths.cards_index,
    )
    write_json(counts, paths.cards_metrics)
    log.info("cards: %d of %d clusters drawn", counts["cards"], counts["clusters"])
    return counts


def draw(
    cfg: cards.CardsConfig,
    *,
    labels: Path = Path("data/processed/cluster_labels.csv"),
    terms: Path | None = Path("data/processed/cluster_terms.csv"),
    features_path: Path = Path("data/processed/features.npz"),
    manifest: Path = Path("data/interim/images.csv"),
    images_dir: Path = Path("data/images"),
    out_dir: Path = Path("reports/clusters"),
    index: Path | None = None,
    root: Path = Path("."),
) -> dict:
    """Draw `out_dir/<cluster>.jpg` for every cluster and `out_dir/README.md`; return counts.

    `terms`: cluster_terms.csv (label, size, top terms, room-type mix per cluster); None: taken
    from the cluster labels alone (no top terms). `index`: the Markdown index (None:
    `out_dir/README.md`). `root`: what the manifest's paths are relative to (the project root,
    where DVC runs the stage).
    """
    assigned = cards.read_labels(labels)
    summaries = (
        cards.read_terms(terms) if terms is not None else cards.summaries_from_labels(assigned)
    )
    embedding, feature_ids = features.load_features(Path(features_path))
    selection = usable_images(read_manifest(manifest))
    photos = cards.photo_paths(selection.rows, images_dir, root=root)
    result = cards.make_cards(
        assigned,
        summaries,
        embedding,
        feature_ids,
        photos,
        out_dir,
        cfg,
        skipped_statuses=selection.skipped,
        index_path=index,
    )
    return result["counts"]
