"""The `images` stage loop: put every sampled image under `data/images/`, or say why not.

Per sample row, in this order: the file already in `data/images/` (resumable), the dataset's
local tree (`data.images_dir`), its URL when `images.download` is on. Every image goes through
`prepare_image`; nothing fails the stage but a bad config: each problem is a manifest row with
status `failed` and a short reason (`tables.MANIFEST_COLUMNS`), counted in the metrics.
docs/images.md; design and measurements: docs/design/images.md.
"""

from __future__ import annotations

import logging
import numbers
import os
import queue
import re
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from alien_hotels.images.config import ImagesConfig
from alien_hotels.images.fetch import Downloader, FetchError
from alien_hotels.images.prepare import EXTENSION_FORMAT, prepare_image
from alien_hotels.tables import MANIFEST_COLUMNS

log = logging.getLogger("alien_hotels.images")


@dataclass(frozen=True, slots=True)
class Outcome:
    image_id: int
    path: str
    status: Literal["ok", "missing", "failed"]
    reason: str
    url: str
    origin: Literal["cached", "local", "downloaded", ""] = ""
    nbytes: int = 0
    image_path: str = ""  # data=folder: the file in the tree
    detail: str = ""  # a failure's detail (reports/skipped.csv)


# Paths from data (metadata fields, CSV columns) never leave their root: a stored file's path is
# built from validated parts only, and a field that would escape is a failure row `unsafe_path`.
# `source` becomes a folder name: a plain name (no separator, `..`, hidden or option-like name).
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
INTEGER = re.compile(r"-?[0-9]{1,19}")
# Extensions a local file of the dataset's tree may have (its download script kept the URL's).
LOCAL_EXTENSIONS = (*EXTENSION_FORMAT, "gif", "bmp")


class UnsafePath(FetchError):
    """A field of the data would make a path outside its root (`..`, absolute, a separator)."""

    def __init__(self, detail: str) -> None:
        super().__init__("unsafe_path", detail)


def relative_image_path(row: pd.Series | dict) -> Path:
    """`<chain_id>/<hotel_id>/<source>/<image_id>.<ext>`: the dataset's own tree layout, from
    validated parts only (ids as integers, `source` a plain name, `ext` from EXTENSION_FORMAT:
    `image_name` only lends its extension), so joined to a folder it stays inside it.

    `UnsafePath` when a part is not what it must be."""
    chain = row.get("chain_id")
    chain = "unknown" if _missing(chain) else _id_text(chain, "chain_id")
    source = row.get("source")
    source = "unknown" if _missing(source) else str(source)
    if not SAFE_NAME.fullmatch(source):
        raise UnsafePath(f"source={source!r} is not a plain folder name")
    name = f"{_id_text(row['image_id'], 'image_id')}.{_stored_extension(row.get('image_name'))}"
    return Path(chain, _id_text(row["hotel_id"], "hotel_id"), source, name)


def _missing(value: object) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or bool(pd.isna(value))


def _id_text(value: object, column: str) -> str:
    """An id as the digits of an integer (an integral float too: pandas reads an integer column
    with a gap as floats)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    if isinstance(value, str) and INTEGER.fullmatch(value.strip()):
        return str(int(value))
    raise UnsafePath(f"{column}={value!r} is not an integer")


def _stored_extension(image_name: object) -> str:
    """The extension of `image_name` when allowed, else `jpg` (`prepare_image` stores other
    formats as JPEG). A name that is no plain file name is refused, not repaired."""
    if _missing(image_name):
        return "jpg"
    name = str(image_name)
    if name in (".", "..") or any(char in name for char in "/\\\0"):
        raise UnsafePath(f"image_name={name!r} is not a plain file name")
    extension = name.rpartition(".")[2].lower()
    return extension if "." in name and extension in EXTENSION_FORMAT else "jpg"


def _tree_path(image_path: object) -> str | None:
    """`image_path` (a file's place below the local tree) when it stays below it: relative, no
    `..`; None when the row has none."""
    if not isinstance(image_path, str) or not image_path:
        return None
    if image_path.startswith("/") or "\0" in image_path or ".." in image_path.split("/"):
        raise UnsafePath(f"image_path={image_path!r} leaves the local tree")
    return image_path


def _inside(root: str | Path, path: str | Path) -> bool:
    """Whether `path` is `root` or below it, compared as absolute normalised paths (resolve
    symlinks first, with `os.path.realpath`, where links must not lead out)."""
    root, path = os.path.abspath(root), os.path.abspath(path)
    return os.path.commonpath([root, path]) == root


def collect_images(
    sample: pd.DataFrame,
    cfg: ImagesConfig,
    local_dir: str | Path | None,
    out_dir: str | Path,
    progress: bool = True,
    *,
    follow_external_symlinks: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Fill `out_dir` with the sample's images; return the manifest and the metrics.

    A local file that is a symlink out of `local_dir` is `unsafe_path` unless
    `follow_external_symlinks` (`data.follow_external_symlinks`)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    local = Path(local_dir) if local_dir else None
    downloader = Downloader(cfg) if cfg.download else None
    # Rows as plain dicts, made as they are submitted, and a bounded window of them in flight:
    # a pandas Series and a future per row, all made up front, cost ~6 KiB per URL at 1.1M.
    # Each outcome goes to its row's place in the sample (no sort, no id -> position map), and
    # finished futures come back through a queue (no `wait()` over the whole window per image).
    rows = enumerate(row._asdict() for row in sample.itertuples(index=False))
    window = threading.BoundedSemaphore(4 * cfg.workers)
    finished: queue.SimpleQueue = queue.SimpleQueue()

    def _finished(future) -> None:  # in the worker thread, or at cancellation
        finished.put(future)
        window.release()

    started = time.monotonic()
    outcomes: list[Outcome] = [None] * len(sample)  # type: ignore[list-item]
    submitted = handled = 0
    with (
        ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="images") as pool,
        tqdm(total=len(sample), unit="img", desc="images", disable=not progress) as bar,
    ):
        try:
            for n, row in rows:
                window.acquire()
                future = pool.submit(
                    _indexed, n, row, cfg, local, out_dir, downloader, follow_external_symlinks
                )
                future.add_done_callback(_finished)
                submitted += 1
                while not finished.empty():
                    _take(finished.get(), outcomes, bar)
                    handled += 1
            while handled < submitted:
                _take(finished.get(), outcomes, bar)
                handled += 1
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    _prune(out_dir, {o.path for o in outcomes if o.status == "ok"})
    manifest = pd.DataFrame(
        [(o.image_id, o.path, o.status, o.reason, o.url, o.image_path, o.detail) for o in outcomes],
        columns=MANIFEST_COLUMNS,
    )
    elapsed = time.monotonic() - started
    metrics = _metrics(outcomes, cfg)
    failures = [o for o in outcomes if o.status == "failed"]
    if failures:
        examples = "; ".join(
            f"{o.image_path or o.image_id} {o.reason} {o.url}".rstrip() for o in failures[:5]
        )
        log.warning(
            "%d images failed (all listed in the manifest), e.g. %s", len(failures), examples
        )
    fetched = metrics["ok_downloaded"]
    log.info(
        "images: %d ok (%d already there, %d local, %d downloaded), %d missing, %d failed "
        "in %.1f s (%.1f img/s)",
        metrics["ok"],
        metrics["ok_cached"],
        metrics["ok_local"],
        fetched,
        metrics["missing"],
        metrics["failed"],
        elapsed,
        len(sample) / elapsed if elapsed > 0 else 0.0,
    )
    return manifest, metrics


def _indexed(n: int, row: dict, *args) -> tuple[int, Outcome]:
    return n, _one(row, *args)


def _take(future, outcomes: list[Outcome], bar) -> None:
    n, outcome = future.result()  # an unexpected error in a worker ends the run here
    outcomes[n] = outcome
    bar.update(1)
    if outcome.status == "failed":
        log.debug("image %s failed: %s (%s)", outcome.image_id, outcome.reason, outcome.url)


def _one(
    row: dict,
    cfg: ImagesConfig,
    local: Path | None,
    out_dir: Path,
    downloader: Downloader | None,
    follow_external_symlinks: bool = False,
) -> Outcome:
    url = "" if pd.isna(row.get("url")) else str(row.get("url")).strip()
    raw_path = row.get("image_path")
    in_tree = raw_path if isinstance(raw_path, str) else ""
    try:  # every field checked before anything is read or written
        rel = relative_image_path(row)
        tree_path = _tree_path(row.get("image_path"))
        target = out_dir / rel
        if not _inside(out_dir, target):  # cannot happen from validated parts: a last guard
            raise UnsafePath(f"{target} is outside {out_dir}")
        image_id = int(rel.stem)
        reason = "not_in_local_tree"
        if target.is_file() and target.stat().st_size > 0:
            return Outcome(image_id, target.as_posix(), "ok", "", url, "cached", 0, in_tree)
        found = None
        if local is not None:
            found = _find_local(
                local, rel, tree_path, row.get("image_name"), follow_external_symlinks
            )
    except UnsafePath as exc:
        log.debug("image %s: %s", row.get("image_id"), exc)
        return Outcome(_raw_id(row), "", "failed", exc.reason, url, "", 0, in_tree, exc.detail)
    detail = ""
    if found is not None:
        try:
            try:
                data = found.read_bytes()
            except OSError as exc:  # permission denied, an I/O error: this photo, not the run
                raise FetchError("unreadable", exc.strerror or type(exc).__name__) from None
            _store(prepare_image(data, rel.suffix.lstrip("."), cfg), target)
            return Outcome(image_id, target.as_posix(), "ok", "", url, "local", 0, in_tree)
        except FetchError as exc:
            reason, detail = f"local_{exc.reason}", exc.detail
            log.debug("local image %s unusable: %s", found, exc)
    if downloader is None:
        status = "missing" if reason == "not_in_local_tree" else "failed"
        return Outcome(image_id, "", status, reason, url, "", 0, in_tree, detail)
    if not url:
        return Outcome(image_id, "", "failed", "no_url", url)
    try:
        body = downloader.get(url)
        _store(prepare_image(body, rel.suffix.lstrip("."), cfg), target)
    except FetchError as exc:
        log.debug("image %s: %s (%s)", image_id, exc, url)  # the detail, e.g. a blocked address
        return Outcome(image_id, "", "failed", exc.reason, url, "", 0, in_tree, exc.detail)
    return Outcome(image_id, target.as_posix(), "ok", "", url, "downloaded", len(body))


def _raw_id(row: dict) -> object:
    """The row's image id for the manifest: an integer when it is one, else as given."""
    try:
        return int(_id_text(row.get("image_id"), "image_id"))
    except UnsafePath:
        return row.get("image_id")


def _find_local(
    local: Path,
    rel: Path,
    tree_path: str | None = None,
    image_name: object = None,
    follow_external_symlinks: bool = False,
) -> Path | None:
    """The row's file in the local tree: `tree_path` (data=folder: its place in the tree, checked
    by `_tree_path`), else `rel` with any of the tree's extensions (the image name's first).

    A file there that is a symlink out of the tree is `UnsafePath`, unless
    `follow_external_symlinks`: it is not read."""
    if tree_path is not None:
        candidates = [local / tree_path]
    else:
        own = str(image_name).rpartition(".")[2].lower() if isinstance(image_name, str) else ""
        first = [ext for ext in (own, rel.suffix[1:]) if ext in LOCAL_EXTENSIONS]
        exact = local / rel
        candidates = [
            exact.with_suffix(f".{ext}") for ext in dict.fromkeys([*first, *EXTENSION_FORMAT])
        ]
    for found in candidates:
        if _is_file(found):
            if not follow_external_symlinks and not _inside(
                os.path.realpath(local), os.path.realpath(found)
            ):
                raise UnsafePath(f"{found} is a symlink out of {local}")
            return found
    return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the system, ...: nothing to read there
        return False


def _store(data: bytes, target: Path) -> None:
    """Write `target` atomically: a per-thread temporary, then a rename. Leaner than
    `common.atomic_path` (no sweep of the folder per image); what a kill leaves behind is
    swept by `_prune` at the end of the run. The folder is made only when the open says it is
    missing (once per hotel and source, not a `mkdir` per image)."""
    tmp = target.with_name(f".{target.name}.{threading.get_ident():x}.tmp")
    try:
        tmp.write_bytes(data)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
    os.replace(tmp, target)


def _prune(out_dir: Path, keep: set[str]) -> None:
    """Remove files of earlier samples and of interrupted writes (the `.<name>.<random>.tmp` a
    kill leaves), so the output is exactly this sample's.

    Only files in the layout this stage writes (`<chain>/<hotel>/<source>/<file>`) are touched.
    """
    # `keep` holds the outcomes' paths (`out_dir / rel` as strings): compared as normalised
    # strings, not Path objects or `resolve()`d (a Path costs ~0.5 KiB, `resolve` system calls
    # per path component: at 1.1M images both showed).
    keep = {os.path.normpath(p) for p in keep}
    for dirpath, _dirnames, filenames in os.walk(out_dir, topdown=False):
        rel_dir = os.path.relpath(dirpath, out_dir)
        depth = 0 if rel_dir == "." else rel_dir.count(os.sep) + 1
        for name in filenames:
            path = os.path.join(dirpath, name)
            if depth == 3 and os.path.normpath(path) not in keep:
                os.unlink(path)
        if 0 < depth <= 3 and not os.listdir(dirpath):
            shutil.rmtree(dirpath)


def _metrics(outcomes: list[Outcome], cfg: ImagesConfig) -> dict:
    status = Counter(o.status for o in outcomes)
    origin = Counter(o.origin for o in outcomes if o.status == "ok")
    failed = Counter(o.reason for o in outcomes if o.status == "failed")
    return {
        "requested": len(outcomes),
        "ok": status["ok"],
        "ok_cached": origin["cached"],
        "ok_local": origin["local"],
        "ok_downloaded": origin["downloaded"],
        "missing": status["missing"],
        "failed": status["failed"],
        "failed_by_reason": dict(sorted(failed.items())),
        "bytes_downloaded": sum(o.nbytes for o in outcomes),
        "download_enabled": cfg.download,
    }
