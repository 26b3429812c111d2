"""The output paths every stage writes: the ones `dvc.yaml` declares."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from alien_hotels.tables import EMBEDDING_PATH


@dataclass(frozen=True)
class StagePaths:
    sample: Path = Path("data/interim/sample.csv")
    sample_metrics: Path = Path("metrics/sample.json")
    images_manifest: Path = Path("data/interim/images.csv")
    images_dir: Path = Path("data/images")
    images_metrics: Path = Path("metrics/images.json")
    # Every file of the photo tree left out or failed, with its path and reason (for people).
    skipped_report: Path = Path("reports/skipped.csv")
    captions: Path = Path("data/processed/captions.csv")
    caption_failures: Path = Path("data/processed/caption_failures.csv")
    caption_metrics: Path = Path("metrics/captioning.json")
    texts: Path = Path("data/processed/texts.csv")
    preprocess_metrics: Path = Path("metrics/preprocess.json")
    room_types: Path = Path("data/processed/room_types.csv")
    room_types_metrics: Path = Path("metrics/room_types.json")
    duplicates: Path = Path("data/processed/duplicates.csv")
    duplicates_metrics: Path = Path("metrics/duplicates.json")
    features: Path = Path("data/processed/features.npz")
    features_metrics: Path = Path("metrics/features.json")
    labels: Path = Path("data/processed/cluster_labels.csv")
    cluster_metrics: Path = Path("metrics/clustering.json")
    elbow_plot: Path = Path("plots/elbow.csv")
    clusters_report: Path = Path("reports/clusters.md")
    cluster_terms: Path = Path("data/processed/cluster_terms.csv")  # read by `cards`
    cards_dir: Path = Path("reports/clusters")  # one montage per cluster (cached)
    cards_index: Path = Path("reports/cluster_cards.md")
    cards_metrics: Path = Path("metrics/cards.json")
    clusters: Path = Path("data/processed/clusters.csv")
    map_html: Path = Path("reports/cluster_map.html")
    map_png: Path = Path("reports/cluster_map.png")
    edited_dir: Path = Path("data/edited")
    edit_tables: Path = Path("data/processed/edits")
    edit_sheets: Path = Path("reports/edits")
    edit_recipe_metrics: Path = Path("metrics/edits")
    edit_metrics: Path = Path("metrics/editing.json")
    alien_ranking: Path = Path("reports/alien_ranking.md")
    alien_hotels_plot: Path = Path("plots/alien_hotels.csv")
    sweep_table: Path = Path("plots/edit_tradeoff.csv")
    sweep_plot: Path = Path("reports/edit_tradeoff.png")
    sweep_metrics: Path = Path("metrics/edit_sweep.json")
    ti_embedding: Path = EMBEDDING_PATH  # the edit stages read it there (editing.embedding)
    ti_checkpoints: Path = Path("data/checkpoints/textual_inversion")
    ti_loss_plot: Path = Path("plots/textual_inversion_loss.csv")
    ti_metrics: Path = Path("metrics/textual_inversion.json")
    imagic_dir: Path = Path("data/imagic")
    imagic_table: Path = Path("data/processed/imagic.csv")
    imagic_sheets: Path = Path("reports/imagic")
    imagic_plot: Path = Path("plots/imagic_alpha.csv")
    imagic_metrics: Path = Path("metrics/imagic.json")

    @property
    def sample_skipped(self) -> Path:
        """What the sample stage left out of the tree (`data/interim/sample_skipped.csv`): beside
        the sample, so that it follows it wherever a caller puts the sample."""
        return self.sample.with_name(f"{self.sample.stem}_skipped.csv")

    def under(self, root: str | Path) -> StagePaths:
        """The same layout below `root` (tests and benchmarks write into temporary folders)."""
        return StagePaths(**{f.name: Path(root) / getattr(self, f.name) for f in fields(self)})
