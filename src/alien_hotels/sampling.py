"""Stage 1, `sample`: draw hotels and their images from a dataset (`alien_hotels.datasets`).

The study drew 10 Hotels-50K hotels having 30-60 images each. Hotels are counted on the dataset's
rows (as the study did, before knowing which images download), drawn with `data.seed` after the
filters (`data.image_sources`, `data.chains`, `data.hotel_ids`), then rows without an image or a
caption are dropped and counted, so `metrics/sample.json` says how much of the sample is usable.
docs/hotels50k.md, docs/folder.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from alien_hotels.common import StageError
from alien_hotels.datasets.config import DataConfig
from alien_hotels.datasets.dataset import SET_ASIDE, Dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleStats:
    hotels_eligible: int
    hotels_sampled: int
    rows_sampled: int
    dropped_no_image: int
    dropped_no_caption: int
    rows_kept: int
    load: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        out = {k: v for k, v in self.__dict__.items() if k != "load"}
        return {**out, **self.load}


def sample_hotels(data: Dataset, cfg: DataConfig) -> tuple[pd.DataFrame, SampleStats]:
    """Pick `cfg.n_hotels` hotels with `min_images..max_images` rows, seeded; keep usable rows."""
    df = _apply_filters(data.rows, cfg, data)
    counts = df["hotel_id"].value_counts(sort=False)
    eligible = np.sort(counts[(counts >= cfg.min_images) & (counts <= cfg.max_images)].index)
    n_hotels = len(eligible) if cfg.n_hotels is None else cfg.n_hotels
    if cfg.n_hotels is None and not n_hotels:
        raise StageError(
            f"no hotel has between data.min_images={cfg.min_images} and "
            f"data.max_images={cfg.max_images} images"
            + (" after the filters" if _has_filters(cfg) else "")
        )
    if len(eligible) < n_hotels:
        raise StageError(
            f"data.n_hotels={cfg.n_hotels} but only {len(eligible)} hotels have between "
            f"data.min_images={cfg.min_images} and data.max_images={cfg.max_images} images"
            + (" after the filters" if _has_filters(cfg) else "")
        )
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(eligible, size=n_hotels, replace=False)
    sample = df[df["hotel_id"].isin(chosen)]
    if data.columns is not None:
        sample = data.columns(sample)
    if data.finish is not None:
        sample = _finish(sample, eligible[~np.isin(eligible, chosen)], rng, df, data, cfg)
        n_hotels = sample["hotel_id"].nunique()

    has_image = _truthy(sample["downloaded"]) if "downloaded" in sample else True
    if cfg.format in ("hotels50k", "folder"):  # the images stage decides; nothing is known yet
        has_image = True
    no_image = ~pd.Series(has_image, index=sample.index)
    if cfg.caption_column and cfg.caption_column in sample:
        captions = sample[cfg.caption_column].astype("string").str.strip()
        no_caption = ~no_image & (captions.isna() | (captions == ""))
    elif cfg.caption_column:
        raise StageError(
            f"data.caption_column={cfg.caption_column!r} is not a column of {data.what}; "
            "set data.caption_column=null when the dataset has no captions"
        )
    else:
        no_caption = pd.Series(False, index=sample.index)
    kept = sample[~no_image & ~no_caption].sort_values(["hotel_id", "image_id"])
    stats = SampleStats(
        hotels_eligible=len(eligible),
        hotels_sampled=n_hotels,
        rows_sampled=len(sample),
        dropped_no_image=int(no_image.sum()),
        dropped_no_caption=int(no_caption.sum()),
        rows_kept=len(kept),
        load={**data.dropped, "rows_after_filters": len(df)},
    )
    if kept.empty:
        raise StageError(
            f"none of the {len(sample)} sampled rows of {cfg.path} has an image and a caption"
        )
    return kept.reset_index(drop=True), stats


def _finish(
    sample: pd.DataFrame,
    left: np.ndarray,
    rng: np.random.Generator,
    df: pd.DataFrame,
    data: Dataset,
    cfg: DataConfig,
) -> pd.DataFrame:
    """`data.finish` applied to the drawn rows, keeping `data.min_images` per hotel.

    `finish` may drop rows (folder: files unreadable when hashed, after the draw counted them).
    A hotel left with fewer than `min_images` rows is set aside (a warning, a count); with
    `data.n_hotels` set, another is drawn in its place from the eligible hotels not drawn yet
    (`left`), by the same generator: deterministic, and the draw is unchanged when nothing drops.
    """
    parts = []
    while not sample.empty:
        done, counts = data.finish(sample)
        for key, n in counts.items():  # summed over the rounds
            data.dropped[key] = data.dropped.get(key, 0) + n
        short = _below_min(sample, done, cfg, replace=cfg.n_hotels is not None)
        data.dropped[SET_ASIDE] = data.dropped.get(SET_ASIDE, 0) + len(short)
        for name in sample.loc[sample["hotel_id"].isin(short), "hotel_name"].unique():
            data.skipped.append(
                (f"{name}/", "hotel_below_min_after_unreadable", "see data.min_images")
            )
        parts.append(done[~done["hotel_id"].isin(short)])
        more = len(short) if cfg.n_hotels is not None else 0
        if more > len(left):
            raise StageError(
                f"data.n_hotels={cfg.n_hotels} but too few hotels keep data.min_images="
                f"{cfg.min_images} images once unreadable files are left out "
                f"({data.dropped[SET_ASIDE]} set aside, see the warnings above)"
            )
        redrawn = rng.choice(left, size=more, replace=False)
        left = left[~np.isin(left, redrawn)]
        sample = df[df["hotel_id"].isin(redrawn)]
    out = pd.concat(parts)
    if out.empty:
        raise StageError(
            f"no hotel keeps data.min_images={cfg.min_images} images once unreadable files are "
            "left out (see the warnings above)"
        )
    return out


def _below_min(
    before: pd.DataFrame, after: pd.DataFrame, cfg: DataConfig, replace: bool
) -> list[int]:
    """The hotels `finish` left with fewer than `cfg.min_images` rows, each with a warning."""
    had = before["hotel_id"].value_counts()
    kept = after["hotel_id"].value_counts().reindex(had.index, fill_value=0)
    short = sorted(had.index[kept < cfg.min_images])
    names = before.drop_duplicates("hotel_id").set_index("hotel_id").get("hotel_name")
    for hotel in short:
        name = names[hotel] if names is not None else hotel
        log.warning(
            "hotel %r: %d of its %d files could not be read, fewer than data.min_images=%d "
            "remain; %s",
            name,
            had[hotel] - kept[hotel],
            had[hotel],
            cfg.min_images,
            "another hotel is drawn instead" if replace else "it is left out of the sample",
        )
    return short


# --- filters ---------------------------------------------------------------------------------


def _has_filters(cfg: DataConfig) -> bool:
    return bool(cfg.image_sources or cfg.chains or cfg.hotel_ids)


def _apply_filters(df: pd.DataFrame, cfg: DataConfig, data: Dataset) -> pd.DataFrame:
    if not _has_filters(cfg):
        return df
    keep = pd.Series(True, index=df.index)
    if cfg.image_sources:
        _need(df, "source", "data.image_sources", data)
        known = set(df["source"].astype(str).unique())
        unknown = sorted(set(cfg.image_sources) - known)
        if unknown:
            raise StageError(
                f"data.image_sources: {unknown} not found in {data.what}; "
                f"sources there: {sorted(known)}"
            )
        keep &= df["source"].astype(str).isin(cfg.image_sources).to_numpy()
    if cfg.chains:
        chain_ids = {c for c in cfg.chains if isinstance(c, int)}
        names = {c for c in cfg.chains if isinstance(c, str)}
        if names:
            table = data.hotels if data.hotels is not None else df
            _need(table, "chain_name", "data.chains (names)", data)
            by_name = table.loc[table["chain_name"].isin(names), ["chain_id", "chain_name"]]
            missing = sorted(names - set(by_name["chain_name"]))
            if missing:
                raise StageError(f"data.chains: no chain named {missing} in {data.what}")
            chain_ids |= set(by_name["chain_id"].dropna().astype(int))
        _need(df, "chain_id", "data.chains", data)
        keep &= df["chain_id"].isin(list(chain_ids)).fillna(False).to_numpy(dtype=bool)
    if cfg.hotel_ids:
        absent = sorted(set(cfg.hotel_ids) - set(df["hotel_id"].unique()))
        if absent:
            raise StageError(f"data.hotel_ids: {absent} have no images in {data.what}")
        keep &= df["hotel_id"].isin(cfg.hotel_ids).to_numpy()
    out = df[keep.to_numpy()]
    if out.empty:
        raise StageError(f"the data filters leave no rows of {data.what}")
    return out


def _need(df: pd.DataFrame, column: str, key: str, data: Dataset) -> None:
    if column not in df.columns:
        raise StageError(f"{key} needs a column {column!r}, which {data.what} lacks")


def _truthy(values: pd.Series) -> np.ndarray:
    text = values.astype("string").str.strip().str.lower()
    return text.isin(["true", "1", "yes"]).to_numpy()
