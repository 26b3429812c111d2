"""Cluster cards: for each cluster, the photos nearest its centre drawn as one JPEG montage.

A card (`reports/clusters/<cluster>.jpg`) has a header band (the cluster's label, its size, top
terms and room-type mix) above a grid of `cards.per_cluster` square thumbnails, nearest first,
row by row. "Nearest" is in the clustering's own feature space (`features.npz`): the distance of
each member to the mean of the cluster's members (euclidean, what k-means minimises, or cosine).
Ties are broken by image id, distances are rounded to `DISTANCE_GRID` first so that BLAS noise in
the last bits does not reorder them. A photo that cannot be read is skipped and the next nearest
one takes its place.

Every card has the same pixel size (a slot without a photo stays grey) and the same bytes for the
same inputs and library versions: fixed JPEG quality, baseline, no optimisation, 4:4:4
subsampling, no EXIF/ICC/timestamps. Text from the data (labels, terms) is only drawn, with
control characters removed and truncated to the card's width; paths use the integer cluster id
alone. `README.md` beside the cards indexes them, its cells escaped with `markdown_cell`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from alien_hotels.common import (
    CONTROLS,
    LINE_BREAKS,
    Section,
    StageError,
    atomic_path,
    markdown_cell,
    remove_partial_writes,
    require_columns,
    write_text,
)

if TYPE_CHECKING:
    from PIL import Image, ImageFont

log = logging.getLogger(__name__)

# The files a run writes and may delete: `<cluster>.jpg` for a non-negative integer cluster id.
CARD_NAME = re.compile(r"^\d+\.jpg$")
README = "README.md"
TERMS_COLUMNS = ["cluster", "size", "label", "top_terms", "room_types"]
LABELS_COLUMNS = ["image_id", "cluster"]
# Distances are rounded to this before ranking: two photos at distances that differ only by
# float noise rank by image id, on any CPU.
DISTANCE_GRID = 1e-9
MAX_TEXT = 400  # characters of one header line considered at all (then fitted to the width)

# Layout, in pixels (the thumbnail size is `cards.thumb_size`).
MARGIN = 8
GAP = 4
TITLE_SIZE = 18
BODY_SIZE = 13
LINE_GAP = 4
BACKGROUND = (250, 250, 248)
EMPTY_SLOT = (222, 222, 222)
TITLE_COLOR = (20, 20, 20)
BODY_COLOR = (70, 70, 70)


class CardsConfig(Section):
    """`cards.*`: the montage of the photos nearest each cluster's centre."""

    per_cluster: int = Field(ge=1, le=100)  # photos per card
    columns: int = Field(ge=1, le=20)  # thumbnails per row
    thumb_size: int = Field(ge=32, le=512)  # side of a square thumbnail, in pixels
    quality: int = Field(ge=1, le=95)  # JPEG quality (Pillow's scale; above 95 only grows files)
    distance: Literal["euclidean", "cosine"]
    max_clusters: int | None = Field(ge=1)  # cards for the largest clusters only; null: all
    max_image_pixels: int = Field(ge=1)  # a larger photo is skipped (decompression-bomb guard)
    progress: bool


@dataclass(frozen=True)
class ClusterSummary:
    """What a card's header says about one cluster (cluster_terms.csv's row)."""

    cluster: int
    size: int
    label: str
    top_terms: str
    room_types: str


@dataclass(frozen=True)
class Card:
    """One drawn card: which photos it shows (nearest first) and which were skipped."""

    cluster: int
    file: str | None  # `<cluster>.jpg`, None when no card was drawn
    shown: tuple[str, ...]
    skipped: tuple[str, ...]  # image ids nearer than the last shown one that could not be read


# --- inputs ---------------------------------------------------------------------------------


def _read_strings(path: Path, required: Sequence[str], what: str) -> pd.DataFrame:
    """A CSV with every cell as written (a label `NA` or `None` stays text); clear errors."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{what} not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except pd.errors.EmptyDataError:
        raise StageError(f"{what} is empty: {path}") from None
    return require_columns(df, required, what, path)


def _cluster_ids(values: pd.Series, path: Path, what: str) -> np.ndarray:
    """The `cluster` column as non-negative integers (they name the card files)."""
    text = values.astype(str).str.strip()
    bad = ~text.str.fullmatch(r"\d{1,9}")
    if bad.any():
        raise StageError(
            f"{what} {path}: cluster must be a non-negative integer, got {text[bad].iloc[0]!r}"
        )
    return text.astype(np.int64).to_numpy()


def read_labels(path: str | Path) -> pd.DataFrame:
    """`cluster_labels.csv` (the cluster stage): image_id (str), cluster (int) and the rest."""
    path = Path(path)
    what = "cluster labels (the cluster stage)"
    df = _read_strings(path, LABELS_COLUMNS, what)
    return df.assign(
        image_id=df["image_id"].str.strip(), cluster=_cluster_ids(df["cluster"], path, what)
    )


def read_terms(path: str | Path) -> dict[int, ClusterSummary]:
    """`cluster_terms.csv` (the cluster stage): one summary per cluster."""
    path = Path(path)
    what = "cluster terms (the cluster stage)"
    df = _read_strings(path, TERMS_COLUMNS, what)
    clusters = _cluster_ids(df["cluster"], path, what)
    sizes = pd.to_numeric(df["size"].str.strip(), errors="coerce")
    if sizes.isna().any() or (sizes < 0).any() or (sizes % 1 != 0).any():
        raise StageError(f"{what} {path}: size must be a non-negative integer")
    out = {}
    for cluster, size, row in zip(clusters, sizes, df.itertuples(index=False), strict=True):
        out[int(cluster)] = ClusterSummary(
            int(cluster), int(size), row.label, row.top_terms, row.room_types
        )
    return out


def summaries_from_labels(
    labels: pd.DataFrame, max_room_types: int = 3
) -> dict[int, ClusterSummary]:
    """Summaries from `cluster_labels.csv` alone (no cluster_terms.csv): the size, the
    `cluster_label` column as the label, the room-type mix of `room_type`; no top terms."""
    out = {}
    for cluster, rows in labels.groupby("cluster", sort=True):
        label = ""
        if "cluster_label" in rows:
            names = rows["cluster_label"].astype(str)
            label = names.mode().sort_values().iloc[0] if len(names) else ""
        out[int(cluster)] = ClusterSummary(
            int(cluster), len(rows), label, "", room_type_mix(rows.get("room_type"), max_room_types)
        )
    return out


def room_type_mix(values: pd.Series | None, limit: int = 3) -> str:
    """`bedroom 83%, living area 14%`: the most common room types and their shares."""
    if values is None:
        return ""
    values = values.astype(str).str.strip()
    values = values[values != ""]
    if values.empty:
        return ""
    counts = values.value_counts()
    counts = counts.sort_index().sort_values(ascending=False, kind="stable")  # ties by name
    return ", ".join(
        f"{name} {100 * n / len(values):.0f}%" for name, n in counts.head(limit).items()
    )


def photo_paths(
    rows: pd.DataFrame, images_dir: str | Path, root: str | Path = Path(".")
) -> dict[str, Path]:
    """image id -> file of the manifest's usable rows (`images.usable_images`), `path` taken
    relative to `root` (the images stage writes it relative to the project root). A path that
    does not lie inside `images_dir` (compared lexically, after `..` is resolved) is left out:
    the manifest is data, and a card reads only the images stage's folder."""
    base = os.path.abspath(Path(root) / images_dir)
    out = {}
    for image_id, path in zip(rows["image_id"], rows["path"], strict=True):
        full = os.path.abspath(Path(root) / str(path))
        if os.path.commonpath([base, full]) != base or full == base:
            log.warning("cards: image %s: %s is outside %s, not read", image_id, path, images_dir)
            continue
        out[id_text(image_id)] = Path(full)
    return out


def id_text(value: object) -> str:
    """An image id as text, the way a CSV writes it (`7`, not `7.0` or `np.int64(7)`)."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        value = value.item()
    return str(value).strip()


# --- which photos ---------------------------------------------------------------------------


def rank_by_centroid(
    embedding: np.ndarray, image_ids: Sequence[str], distance: str
) -> list[tuple[str, float]]:
    """The rows of one cluster, nearest to its centroid first: (image id, distance).

    euclidean: to the members' mean (k-means' centre). cosine: 1 - cosine similarity to the mean
    of the L2-normalised members (a zero vector is at distance 1). Distances rounded to
    `DISTANCE_GRID`; equal ones ordered by image id (numerically where the ids are integers).
    """
    x = np.asarray(embedding, dtype=np.float64)
    if len(x) == 0:
        return []
    if distance == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
        centre = x.mean(axis=0)
        centre_norm = np.linalg.norm(centre)
        sims = x @ (centre / centre_norm) if centre_norm > 0 else np.zeros(len(x))
        dist = 1.0 - sims
    elif distance == "euclidean":
        dist = np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1))
    else:
        raise ValueError(f"unknown distance {distance!r}")
    dist = np.round(dist / DISTANCE_GRID) * DISTANCE_GRID + 0.0
    ids = [id_text(i) for i in image_ids]
    numeric = np.array([int(i) if i.isdigit() else np.inf for i in ids], dtype=np.float64)
    order = np.lexsort((np.array(ids, dtype=str), numeric, dist))
    return [(ids[i], float(dist[i])) for i in order]


def chosen_clusters(summaries: Mapping[int, ClusterSummary], max_clusters: int | None) -> list[int]:
    """The clusters that get a card, in cluster order: all, or the `max_clusters` largest."""
    clusters = sorted(summaries)
    if max_clusters is not None and len(clusters) > max_clusters:
        largest = sorted(clusters, key=lambda c: (-summaries[c].size, c))[:max_clusters]
        clusters = sorted(largest)
    return clusters


# --- drawing --------------------------------------------------------------------------------


@cache
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (covers Latin, Cyrillic, Greek) when the system has it, else Pillow's own
    default font. Basic layout (no Raqm): the same glyph placement wherever Pillow runs."""
    from PIL import ImageFont

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(name, size, layout_engine=ImageFont.Layout.BASIC)
    except OSError:
        try:
            return ImageFont.load_default(size)
        except (TypeError, ImportError):  # Pillow without FreeType: the fixed bitmap font
            return ImageFont.load_default()


def clean_text(value: object) -> str:
    """One line of printable text: line breaks become spaces, control and bidi characters go."""
    text = CONTROLS.sub("", LINE_BREAKS.sub(" ", str(value)))
    return " ".join(text.split())[:MAX_TEXT]


def fit_text(text: str, width: int, face) -> str:
    """`text`, shortened with `...` so that it is at most `width` pixels wide in `face`."""
    if face.getlength(text) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if face.getlength(text[:mid].rstrip() + "...") <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "..." if lo else ""


def header_lines(summary: ClusterSummary, shown: int) -> list[tuple[str, bool]]:
    """The header's lines (text, bold)."""
    label = clean_text(summary.label) or "(no label)"
    lines = [
        (f"cluster {summary.cluster}: {label}", True),
        (f"{summary.size} photos; the {shown} nearest the centre, nearest first", False),
    ]
    terms = clean_text(summary.top_terms)
    rooms = clean_text(summary.room_types)
    lines.append((f"terms: {terms}" if terms else "terms: -", False))
    lines.append((f"room types: {rooms}" if rooms else "room types: -", False))
    return lines


def card_size(cfg: CardsConfig) -> tuple[int, int]:
    """(width, height) of every card drawn with `cfg`."""
    rows = math.ceil(cfg.per_cluster / cfg.columns)
    width = 2 * MARGIN + cfg.columns * cfg.thumb_size + (cfg.columns - 1) * GAP
    height = _header_height() + rows * cfg.thumb_size + (rows - 1) * GAP + MARGIN
    return width, height


def _header_height() -> int:
    return MARGIN + TITLE_SIZE + LINE_GAP + 3 * (BODY_SIZE + LINE_GAP) + MARGIN


def tile_box(index: int, cfg: CardsConfig) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of thumbnail `index` (0: the nearest) on a card."""
    row, col = divmod(index, cfg.columns)
    left = MARGIN + col * (cfg.thumb_size + GAP)
    top = _header_height() + row * (cfg.thumb_size + GAP)
    return left, top, left + cfg.thumb_size, top + cfg.thumb_size


def thumbnail(image: Image.Image, side: int) -> Image.Image:
    """The centre square of `image`, scaled to `side` x `side` (the tile is filled)."""
    from PIL import Image, ImageOps

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return ImageOps.fit(rgb, (side, side), Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def draw_card(
    summary: ClusterSummary, photos: Sequence[Image.Image], cfg: CardsConfig
) -> Image.Image:
    """The card of one cluster: header band, then `photos` (nearest first) in a grid."""
    from PIL import Image, ImageDraw

    width, height = card_size(cfg)
    card = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(card)
    y = MARGIN
    text_width = width - 2 * MARGIN
    for text, bold in header_lines(summary, len(photos)):
        size = TITLE_SIZE if bold else BODY_SIZE
        face = font(size, bold)
        draw.text(
            (MARGIN, y),
            fit_text(text, text_width, face),
            fill=TITLE_COLOR if bold else BODY_COLOR,
            font=face,
        )
        y += size + LINE_GAP
    for index in range(cfg.per_cluster):
        box = tile_box(index, cfg)
        if index < len(photos):
            card.paste(thumbnail(photos[index], cfg.thumb_size), box[:2])
        else:
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=EMPTY_SLOT)
    return card


def save_card(card: Image.Image, target: str | Path, quality: int) -> None:
    """The card as JPEG, atomically, with bytes that depend on the pixels alone: no EXIF, ICC
    profile or comment, baseline, no Huffman optimisation, 4:4:4 chroma (legible text)."""
    with atomic_path(target) as tmp, tmp.open("wb") as fh:
        card.save(
            fh,
            format="JPEG",
            quality=quality,
            optimize=False,
            progressive=False,
            subsampling=0,
            dpi=(72, 72),
        )


# --- the index ------------------------------------------------------------------------------


def readme(
    cards: Sequence[Card],
    summaries: Mapping[int, ClusterSummary],
    cfg: CardsConfig,
    n_clusters: int,
    prefix: str = "",
) -> str:
    """The index (`README.md`): a table of the cards, then each card as an image. Links are
    relative: `prefix` + `<cluster>.jpg` (`prefix` "" when the index is beside the cards)."""
    lines = [
        "# Cluster cards",
        "",
        f"For each cluster, the {cfg.per_cluster} photos nearest its centre in the clustering's "
        f"feature space ({cfg.distance} distance), nearest first, row by row; the header gives "
        "the cluster's label, size, top terms and room-type mix. Written by the `cards` stage; "
        "how to read a card: docs/cards.md.",
        "",
    ]
    if len(cards) < n_clusters:
        lines += [
            f"Cards for the {len(cards)} largest of {n_clusters} clusters "
            f"(cards.max_clusters={cfg.max_clusters}).",
            "",
        ]
    lines += [
        "| cluster | card | label | size | photos shown | unreadable | top terms | room types |",
        "|---:|---|---|---:|---:|---:|---|---|",
    ]
    for card in cards:
        s = summaries[card.cluster]
        link = f"[{card.file}]({prefix}{card.file})" if card.file else "-"
        lines.append(
            f"| {card.cluster} | {link} | {markdown_cell(clean_text(s.label))} | {s.size} | "
            f"{len(card.shown)} | {len(card.skipped)} | {markdown_cell(clean_text(s.top_terms))} | "
            f"{markdown_cell(clean_text(s.room_types))} |"
        )
    lines.append("")
    for card in cards:
        if card.file:
            lines += [
                f"## Cluster {card.cluster}",
                "",
                f"![cluster {card.cluster}]({prefix}{card.file})",
                "",
            ]
    return "\n".join(lines)


def no_photos_readme(n_clusters: int, skipped: Mapping[str, int]) -> str:
    statuses = ", ".join(f"{name} {n}" for name, n in sorted(skipped.items())) or "none"
    return "\n".join(
        [
            "# Cluster cards",
            "",
            f"No photos are available in this run, so none of the {n_clusters} clusters has a "
            "card. The images manifest (the images stage's) has no usable image: the bundled "
            "sample has captions only. A run with photos (data=folder, data=hotels50k) draws "
            "one `<cluster>.jpg` per cluster (docs/cards.md).",
            "",
            f"Images manifest statuses: {statuses}.",
            "",
        ]
    )


# --- the run ---------------------------------------------------------------------------------


def make_cards(
    labels: pd.DataFrame,
    summaries: Mapping[int, ClusterSummary],
    embedding: np.ndarray,
    feature_ids: Sequence,
    photos: Mapping[str, Path],
    out_dir: str | Path,
    cfg: CardsConfig,
    skipped_statuses: Mapping[str, int] | None = None,
    index_path: str | Path | None = None,
) -> dict:
    """Draw every card into `out_dir` and write its README; return the run's counts.

    `labels`: image_id (str) and cluster (int) per clustered image; `embedding`/`feature_ids`:
    `features.npz`; `photos`: image id -> file (`photo_paths`). No photos at all: only the
    README, which says so. Card files of an earlier run that this one does not write
    (`<n>.jpg` only) are deleted. `index_path`: where the index goes (default
    `out_dir/README.md`); elsewhere, its links lead into `out_dir` from there.
    """
    from tqdm.auto import tqdm

    from alien_hotels.imageio import ImageFailure, load_rgb

    out_dir = Path(out_dir)
    index = Path(index_path) if index_path is not None else out_dir / README
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(out_dir)
    labels = labels.reset_index(drop=True)
    rows = _feature_rows(labels, feature_ids)
    clusters = chosen_clusters(summaries, cfg.max_clusters)
    missing = sorted(set(labels["cluster"].astype(int)) - set(summaries))
    if missing:
        raise StageError(
            f"cards: cluster(s) {', '.join(map(str, missing[:5]))} of the cluster labels are not "
            "in the cluster terms table: rerun the cluster stage"
        )
    clustered = set(labels["image_id"])
    photos = {image_id: path for image_id, path in photos.items() if image_id in clustered}
    cards: list[Card] = []
    if photos:
        for cluster in tqdm(clusters, desc="cluster cards", unit="card", disable=not cfg.progress):
            members = labels.index[labels["cluster"].to_numpy() == cluster]
            ranked = rank_by_centroid(
                embedding[rows[members]], labels.loc[members, "image_id"].tolist(), cfg.distance
            )
            shown, skipped, images = [], [], []
            for image_id, _ in ranked:
                if len(images) == cfg.per_cluster:
                    break
                path = photos.get(image_id)
                if path is None:
                    continue  # no photo for this caption: not a failure of the card
                try:
                    images.append(
                        load_rgb(
                            path,
                            max_pixels=cfg.max_image_pixels,
                            limit_name="cards.max_image_pixels",
                        )
                    )
                except ImageFailure as exc:
                    log.warning("cards: image %s skipped: %s", image_id, exc.reason)
                    skipped.append(image_id)
                    continue
                except Exception as exc:  # a decoder bug must not stop the run either
                    log.warning("cards: image %s skipped: %s", image_id, type(exc).__name__)
                    skipped.append(image_id)
                    continue
                shown.append(image_id)
            name = f"{cluster}.jpg"
            save_card(draw_card(summaries[cluster], images, cfg), out_dir / name, cfg.quality)
            cards.append(Card(cluster, name, tuple(shown), tuple(skipped)))
        text = readme(cards, summaries, cfg, len(summaries), prefix=link_prefix(out_dir, index))
    else:
        text = no_photos_readme(len(summaries), skipped_statuses or {})
    written = {card.file for card in cards}
    stale = remove_stale_cards(out_dir, keep=written)
    write_text(text, index)
    counts = {
        "clusters": len(summaries),
        "cards": len(cards),
        "photos_available": len(photos),
        "photos_shown": sum(len(card.shown) for card in cards),
        "unreadable": sum(len(card.skipped) for card in cards),
        "stale_removed": len(stale),
    }
    log.info(
        "cards: %d card(s) for %d cluster(s), %d photo(s) shown, %d unreadable",
        counts["cards"],
        counts["clusters"],
        counts["photos_shown"],
        counts["unreadable"],
    )
    return {"counts": counts, "cards": cards}


def link_prefix(out_dir: Path, index: Path) -> str:
    """What a link in `index` puts before `<cluster>.jpg` to reach `out_dir` (POSIX, relative)."""
    rel = os.path.relpath(os.path.abspath(out_dir), os.path.abspath(index.parent))
    return "" if rel == "." else Path(rel).as_posix() + "/"


def _feature_rows(labels: pd.DataFrame, feature_ids: Sequence) -> np.ndarray:
    """For each row of `labels`, its row in the features."""
    ids = [id_text(i) for i in feature_ids]
    position = {image_id: n for n, image_id in enumerate(ids)}
    if len(position) != len(ids):
        raise StageError("cards: features.npz has an image id twice")
    rows = np.array([position.get(i, -1) for i in labels["image_id"]], dtype=np.int64)
    if (rows < 0).any():
        first = labels["image_id"].to_numpy()[rows < 0][0]
        raise StageError(
            f"cards: {int((rows < 0).sum())} clustered image(s) (e.g. {first}) have no features: "
            "the cluster labels and features.npz are from different runs; rerun the pipeline"
        )
    return rows


def remove_stale_cards(out_dir: str | Path, keep: Iterable[str] = ()) -> list[Path]:
    """Delete `<n>.jpg` files in `out_dir` that are not in `keep`; nothing else is touched."""
    keep = set(keep)
    removed = []
    for path in sorted(Path(out_dir).iterdir()):
        if (
            CARD_NAME.match(path.name)
            and path.name not in keep
            and (path.is_file() or path.is_symlink())
        ):
            path.unlink()
            removed.append(path)
    if removed:
        log.info("cards: removed %d card(s) of an earlier run", len(removed))
    return removed
