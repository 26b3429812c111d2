"""`caption.method=file`: captions made elsewhere, from the CSV `caption.file`.

The file holds `caption` and a key: `image_path`, the photo's path relative to `data.path` (as
`data/interim/sample.csv` has it for `data=folder`), or `image_id` (the sample's id, e.g. from
an earlier run's tables). With both columns, `image_path` is the key. Other columns are ignored.

Checked before anything is written; each problem is an error naming the rows (the first few):

* a path that is no file under `data.path` (a typo, or a path not relative to `data.path`);
* a key given twice (which caption would be meant?);
* an empty caption (the text stages would get nothing);
* an `image_id` that is no integer.

Not errors, because a run may draw fewer hotels than the file covers: rows whose photo is not in
this sample (not drawn; or, for an id, a photo replaced since: a new id) are counted
(`not_in_sample`) and left out; sampled photos the file has no caption for are failures
(`no_caption_in_file`) in `caption_failures.csv`, as a photo the model could not read.
"""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path

import pandas as pd

from alien_hotels.captioning import CAPTION_COLUMNS, FAILURE_COLUMNS
from alien_hotels.captioning.config import CaptionConfig
from alien_hotels.common import StageError

log = logging.getLogger("alien_hotels.captioning")
PATH_KEY, ID_KEY = "image_path", "image_id"
SHOWN = 5  # rows named in an error or a warning


def file_captions(
    sample: pd.DataFrame, cfg: CaptionConfig, data_path: str | Path
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Captions for the sample's images from `cfg.file`: (captions, failures, metrics)."""
    table = _read(Path(cfg.file))
    key = PATH_KEY if PATH_KEY in table.columns else ID_KEY
    line = pd.Series(range(2, len(table) + 2), index=table.index)  # as a spreadsheet numbers them
    captions = table["caption"].str.strip()
    _check_empty(captions, table[key], line, cfg.file)
    if key == PATH_KEY:
        if PATH_KEY not in sample.columns:
            raise StageError(
                f"caption.file={cfg.file} is keyed by image_path, but this dataset's sample has "
                "no image_path (only data=folder has one); key the captions by image_id"
            )
        keys = table[PATH_KEY].map(_tree_path)
        sample_keys = sample[PATH_KEY].astype(str).map(_tree_path)
        _check_unknown_paths(keys, line, data_path, cfg.file)
    else:
        keys = _ids(table[ID_KEY], line, cfg.file)
        sample_keys = sample[ID_KEY].astype("int64").astype(str)
    _check_duplicates(keys, line, cfg.file)
    by_key = pd.Series(captions.to_numpy(), index=keys.to_numpy())
    in_sample = keys.isin(set(sample_keys))
    if (~in_sample).any():
        log.warning(
            "caption.file=%s: %d row(s) for photos not in this sample left out (not drawn%s), "
            "e.g. %s",
            cfg.file,
            int((~in_sample).sum()),
            "" if key == PATH_KEY else ", or replaced since: a new photo gets a new id",
            ", ".join(keys[~in_sample].head(SHOWN)),
        )
    found = sample_keys.isin(by_key.index)
    out = pd.DataFrame(
        {
            "image_id": sample.loc[found, ID_KEY].to_numpy(),
            "caption": by_key.reindex(sample_keys[found]).to_numpy(),
            "caption_mode": "file",
            "caption_model": cfg.file,  # where the captions came from
            "clip_model": "",
        },
        columns=CAPTION_COLUMNS,
    )
    missing = sample.loc[~found]
    failures = pd.DataFrame(
        {
            "image_id": missing[ID_KEY].to_numpy(),
            "path": missing[PATH_KEY].to_numpy() if PATH_KEY in missing else "",
            "reason": "no_caption_in_file",
            "detail": f"no row in {cfg.file}",
        },
        columns=FAILURE_COLUMNS,
    )
    if len(failures):
        log.warning(
            "caption.file=%s has no caption for %d sampled photo(s), e.g. %s",
            cfg.file,
            len(failures),
            ", ".join(sample_keys[~found].head(SHOWN)),
        )
    metrics = {
        "images": len(sample),
        "ok": len(out),
        "failed": len(failures),
        "failed_by_reason": {"no_caption_in_file": len(failures)} if len(failures) else {},
        "file": cfg.file,
        "key": key,
        "rows_in_file": len(table),
        "not_in_sample": int((~in_sample).sum()),
    }
    return out, failures, metrics


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise StageError(
            f"caption.method=file: caption.file={path} not found; a CSV with the columns "
            "image_path (relative to data.path) or image_id, and caption (docs/captioning.md)"
        )
    try:  # utf-8-sig: spreadsheets often write a byte-order mark
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise StageError(f"caption.file={path} is empty") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise StageError(f"caption.file={path} is not a UTF-8 CSV: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]
    if "caption" not in table.columns or not {PATH_KEY, ID_KEY} & set(table.columns):
        header = ", ".join(table.columns)
        hint = ""
        if len(table.columns) == 1 and any(sep in header for sep in ";\t"):
            hint = " (it looks separated by ';' or tabs: save it as comma-separated CSV)"
        raise StageError(
            f"caption.file={path} needs the columns caption and image_path (or image_id); "
            f"it has: {header}{hint}"
        )
    if table.empty:
        raise StageError(f"caption.file={path} has no rows")
    return table


def _tree_path(value: str) -> str:
    """A path as the sample writes it: `/` separators, NFC (macOS tools write NFD), no `./`."""
    text = unicodedata.normalize("NFC", value.strip().replace("\\", "/"))
    while text.startswith("./"):
        text = text[2:]
    return text


def _rows(mask: pd.Series, line: pd.Series, values: pd.Series) -> str:
    shown = [f"line {line[i]}: {values[i]!r}" for i in mask[mask].index[:SHOWN]]
    more = int(mask.sum()) - SHOWN
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _check_empty(captions: pd.Series, keys: pd.Series, line: pd.Series, file: str) -> None:
    empty = captions == ""
    if empty.any():
        raise StageError(
            f"caption.file={file}: {int(empty.sum())} empty caption(s) "
            f"({_rows(empty, line, keys)}); give each a caption or remove the row"
        )


def _check_unknown_paths(keys: pd.Series, line: pd.Series, root: str | Path, file: str) -> None:
    root = Path(root)
    unknown = keys.map(lambda p: not p or ".." in p.split("/") or not (root / p).is_file())
    if unknown.any():
        raise StageError(
            f"caption.file={file}: {int(unknown.sum())} image_path(s) are no file under "
            f"data.path={root} ({_rows(unknown, line, keys)}); paths are relative to data.path, "
            "as in data/interim/sample.csv (e.g. `Grand Hôtel/Chambre/IMG_0001.JPG`)"
        )


def _ids(values: pd.Series, line: pd.Series, file: str) -> pd.Series:
    text = values.str.strip()
    number = pd.to_numeric(text, errors="coerce")
    bad = number.isna() | (number != number.round())
    if bad.any():
        raise StageError(
            f"caption.file={file}: {int(bad.sum())} image_id(s) are no integer "
            f"({_rows(bad, line, values)})"
        )
    return text.map(lambda v: str(int(v)) if v.lstrip("-").isdigit() else str(int(float(v))))


def _check_duplicates(keys: pd.Series, line: pd.Series, file: str) -> None:
    repeated = keys.duplicated(keep=False)
    if repeated.any():
        raise StageError(
            f"caption.file={file}: {keys[repeated].nunique()} photo(s) have more than one row "
            f"({_rows(repeated, line, keys)}); keep one caption per photo"
        )
