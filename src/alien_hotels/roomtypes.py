"""Stage `room_types`: a room type per image from up to three independent sources.

* `captions`: the keyword rules of `room_types.rules` on the caption (`text.RoomTypeClassifier`).
  Circular when it is the yardstick of the caption clusters: both come from the same words.
* `image`: CLIP zero-shot on the photo, one prompt per rule name ("a photo of a hotel
  bathroom", ...), with the caption stage's CLIP model; the best prompt's softmax probability is
  recorded and below `room_types.image.other_below` the label is `room_types.default`.
* `folder`: the room-type folder names of a `data=folder` tree (the sample's `room_type_folder`).

`room_types.source` picks the one the cluster scores use (`auto`: folder, else image, else
captions; see `resolve_sources`); every other source available in the run is kept beside it, so
the cluster stage reports the agreement with each.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from alien_hotels.captioning.config import CaptionConfig
from alien_hotels.common import StageError
from alien_hotels.embeddings import ClipEncoder, batches
from alien_hotels.tables import ROOM_TYPE_FOLDER, ROOM_TYPE_SOURCES
from alien_hotels.text import RoomTypeClassifier, RoomTypesConfig

log = logging.getLogger(__name__)

# Rows whose chosen source gave no label (an unreadable image, a photo outside any room-type
# folder): shown under this name, left out of the agreement scores.
UNLABELLED = "unlabelled"
ROOM_TYPE_COLUMNS = [
    "image_id",
    "room_type",
    "room_type_source",
    "room_type_captions",
    "room_type_image",
    "room_type_image_prob",
    ROOM_TYPE_FOLDER,
]


@dataclass(frozen=True)
class Sources:
    """The source the scores use and every source computed in this run (report order)."""

    chosen: str
    computed: tuple[str, ...]


def source_column(source: str) -> str:
    return f"room_type_{source}"


def folder_labels(sample: pd.DataFrame) -> pd.Series:
    """`room_type_folder` per image of the sample, stripped; NaN where empty or absent."""
    if ROOM_TYPE_FOLDER not in sample.columns:
        return pd.Series(np.nan, index=sample.index, dtype=object)
    labels = sample[ROOM_TYPE_FOLDER].astype("string").str.strip()
    return labels.where(labels.notna() & (labels != ""), None).astype(object)


def resolve_sources(
    cfg: RoomTypesConfig, *, folder_share: float, has_images: bool, caption_method: str
) -> Sources:
    """Which source the scores use, and which sources this run computes.

    `folder_share`: the share of the images with a room-type folder name. `auto` takes folder
    names when that share is at least `auto_folder_share`, else the image zero-shot when images
    are usable AND the caption stage runs CLIP anyway (`caption.method=clip_interrogator`, so the
    weights are needed already), else the captions. The image zero-shot (a model) runs only
    under `auto` (then also beside folder names) or `image`; captions and folder names are free
    and always kept when present. An explicit source that the run cannot provide is an error.
    """
    has_folder = folder_share > 0
    image_free = has_images and caption_method == "clip_interrogator"
    if cfg.source == "auto":
        enough_folders = has_folder and folder_share >= cfg.auto_folder_share
        chosen = "folder" if enough_folders else "image" if image_free else "captions"
        with_image = image_free
        if has_folder and not enough_folders:
            log.warning(
                "room_types.source=auto: only %.0f%% of the images have a room-type folder "
                "(room_types.auto_folder_share=%s), so the scores use %s; the folder names are "
                "scored beside them (room_types.source=folder uses them anyway)",
                100 * folder_share,
                cfg.auto_folder_share,
                chosen,
            )
    else:
        chosen = cfg.source
        with_image = chosen == "image"
        if chosen == "folder" and not has_folder:
            raise StageError(
                f"room_types.source=folder: the sample has no room-type folder names (column "
                f"{ROOM_TYPE_FOLDER}, written by data=folder for a <hotel>/<room type>/ tree); use "
                "room_types.source=auto, captions or image"
            )
        if chosen == "image" and not has_images:
            raise StageError(
                "room_types.source=image: no usable image in the images manifest "
                "(data/interim/images.csv: status ok with a path) for the captioned images; "
                "use room_types.source=auto or captions"
            )
    computed = tuple(
        s
        for s in ROOM_TYPE_SOURCES
        if s == "captions" or (s == "image" and with_image) or (s == "folder" and has_folder)
    )
    return Sources(chosen, computed)


def caption_labels(captions: Sequence[str], cfg: RoomTypesConfig) -> list[str]:
    classify = RoomTypeClassifier(cfg)
    return [classify(str(c)) for c in captions]


# --- CLIP zero-shot ------------------------------------------------------------------------------


class ZeroShotRoomTypes:
    """The caption stage's CLIP model (`embeddings.ClipEncoder`: same weights, on-disk check,
    device, dtype and threads) scoring each photo against one prompt per room type."""

    def __init__(self, cfg: RoomTypesConfig, caption: CaptionConfig) -> None:
        self.cfg = cfg
        self.names = list(cfg.rules)
        try:
            self.encoder = ClipEncoder(caption, "room_types: the image zero-shot")
        except StageError as exc:
            raise StageError(
                f"{exc}\nOr set room_types.source=captions (keyword rules on the captions; no "
                "model)."
            ) from None
        self.weights = self.encoder.weights
        prompts = cfg.prompts()
        self.text = self.encoder.texts([prompts[n] for n in self.names])
        self.scale = self.encoder.logit_scale

    def probabilities(self, images: list) -> np.ndarray:
        """Softmax over the room types' prompts, one row per PIL image."""
        with np.errstate(invalid="ignore", over="ignore"):  # NaN rows get no label (`labels`)
            logits = self.scale * self.encoder.images(images) @ self.text.T
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            return exp / exp.sum(axis=1, keepdims=True)

    def labels(self, probs: np.ndarray) -> tuple[list[str | None], np.ndarray]:
        """(label, probability of the best prompt) per row; below `other_below`: the default.

        A row with a non-finite probability (an fp16 overflow in the model) gets no label: it
        is no evidence of `other`."""
        best = probs.argmax(axis=1)
        top = probs[np.arange(len(probs)), best]
        finite = np.isfinite(probs).all(axis=1)
        names = [
            None
            if not ok
            else self.names[i]
            if p >= self.cfg.image.other_below
            else self.cfg.default
            for i, p, ok in zip(best, top, finite, strict=True)
        ]
        return names, np.where(finite, top, np.nan)


NONFINITE = "nonfinite_scores"  # the model gave NaN or inf (e.g. fp16 overflow): no label


@dataclass
class ImageLabels:
    table: pd.DataFrame  # image_id, room_type_image, room_type_image_prob
    failed: dict[str, int]  # reason -> images that could not be read
    weights: str  # the CLIP weights that ran


def image_labels(
    rows: pd.DataFrame, cfg: RoomTypesConfig, caption: CaptionConfig, root: Path = Path(".")
) -> ImageLabels:
    """Zero-shot room types of `rows` (image_id, path: the manifest's usable images), batched,
    decoded in background threads; an unreadable image gets no label (its reason is counted)."""
    from tqdm.auto import tqdm

    from alien_hotels.captioning.images import load_row, prefetch

    zero_shot = ZeroShotRoomTypes(cfg, caption)
    image_cfg = cfg.image
    items = [
        (root, str(i), str(p), image_cfg.max_image_side, caption.max_image_pixels)
        for i, p in zip(rows["image_id"], rows["path"], strict=True)
    ]
    loaded = prefetch(items, load_row, image_cfg.loader_workers, ahead=2 * image_cfg.batch_size)
    labels: dict[str, tuple[str, float]] = {}
    failed: dict[str, int] = {}
    with tqdm(
        total=len(items), desc="room types (CLIP)", unit="img", disable=not image_cfg.progress
    ) as bar:
        for batch in batches(loaded, image_cfg.batch_size):
            ok = [item for item in batch if item.ok]
            for item in batch:
                if not item.ok:
                    failed[item.reason] = failed.get(item.reason, 0) + 1
                    log.warning("room_types: %s: %s %s", item.path, item.reason, item.detail)
            if ok:
                names, top = zero_shot.labels(zero_shot.probabilities([i.image for i in ok]))
                for item, name, p in zip(ok, names, top, strict=True):
                    if name is None:
                        failed[NONFINITE] = failed.get(NONFINITE, 0) + 1
                        log.warning("room_types: %s: %s", item.path, NONFINITE)
                    else:
                        labels[item.image_id] = (name, float(p))
            bar.update(len(batch))
    ids = [str(i) for i in rows["image_id"]]
    table = pd.DataFrame(
        {
            "image_id": rows["image_id"].to_numpy(),
            "room_type_image": [labels[i][0] if i in labels else None for i in ids],
            "room_type_image_prob": [
                round(labels[i][1], 4) if i in labels else np.nan for i in ids
            ],
        }
    )
    return ImageLabels(table, dict(sorted(failed.items())), zero_shot.weights)


def choose(table: pd.DataFrame, source: str) -> pd.Series:
    """The chosen source's labels, `UNLABELLED` where it gave none."""
    return (
        table[source_column(source)]
        .astype(object)
        .where(table[source_column(source)].notna(), UNLABELLED)
    )
