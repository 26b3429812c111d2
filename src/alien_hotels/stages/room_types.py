"""Stage `room_types`: a room type per captioned image from the captions, the photo (CLIP
zero-shot) and the dataset's folders (room_types.*; caption.* for the CLIP model)."""

from __future__ import annotations

import logging

import pandas as pd

from alien_hotels import roomtypes
from alien_hotels.common import StageError, read_csv, write_csv, write_json
from alien_hotels.config import Params
from alien_hotels.stages.paths import StagePaths
from alien_hotels.tables import ROOM_TYPE_FOLDER, read_manifest, usable_images

log = logging.getLogger("alien_hotels")


def run(params: Params, paths: StagePaths = StagePaths()) -> pd.DataFrame:
    cfg = params.room_types
    sample = read_csv(paths.sample, ["image_id"], what="sample table", usecols=[ROOM_TYPE_FOLDER])
    captions = read_csv(paths.captions, ["image_id", "caption"], what="captions table", usecols=[])
    # The images the text half can cluster: captioned, in the sample (as `preprocess` joins them).
    table = captions[["image_id", "caption"]].merge(
        sample.drop(columns=["caption"], errors="ignore"), on="image_id", how="inner"
    )
    table = table[table["caption"].astype("string").str.strip().fillna("") != ""]
    table = table.drop_duplicates("image_id").reset_index(drop=True)
    if table.empty:
        raise StageError("room_types: no captioned images (captions and sample share no image_id)")

    folder = roomtypes.folder_labels(table)
    # No manifest (a run outside DVC that skipped the images stage) means no images.
    usable = pd.DataFrame(columns=["image_id", "path"])
    if paths.images_manifest.is_file():
        usable = usable_images(read_manifest(paths.images_manifest)).rows
        usable = usable[usable["image_id"].isin(table["image_id"])]
    sources = roomtypes.resolve_sources(
        cfg,
        folder_share=float(folder.notna().mean()),
        has_images=len(usable) > 0,
        caption_method=params.caption.method,
    )
    log.info(
        "room types from %s (computed: %s; %d of %d images usable)",
        sources.chosen,
        ", ".join(sources.computed),
        len(usable),
        len(table),
    )
    out = pd.DataFrame({"image_id": table["image_id"]})
    out["room_type_captions"] = roomtypes.caption_labels(table["caption"], cfg)
    metrics: dict = {"source": sources.chosen, "computed": ",".join(sources.computed)}
    if "image" in sources.computed:
        found = roomtypes.image_labels(usable[["image_id", "path"]], cfg, params.caption)
        out = out.merge(found.table, on="image_id", how="left")
        metrics["clip_model"] = params.caption.clip_model_name
        metrics["image_failed"] = sum(found.failed.values())
    else:
        out["room_type_image"] = None
        out["room_type_image_prob"] = float("nan")
    out[ROOM_TYPE_FOLDER] = folder.to_numpy() if "folder" in sources.computed else None
    out["room_type"] = roomtypes.choose(out, sources.chosen)
    out["room_type_source"] = sources.chosen
    out = out[roomtypes.ROOM_TYPE_COLUMNS]
    metrics["n_images"] = len(out)
    for source in sources.computed:
        metrics[f"labelled_{source}"] = int(out[roomtypes.source_column(source)].notna().sum())
    write_csv(out, paths.room_types)
    write_json(metrics, paths.room_types_metrics)
    return out
