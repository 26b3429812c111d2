"""Append-only checkpoint of finished images, so a killed caption run resumes where it stopped.

One JSON line per finished image (caption or failure), keyed by image id; the file name carries a
hash of every setting that changes captions, so changing one starts a fresh checkpoint. Each line
is flushed and fsynced before the next image starts. A kill can at worst leave the last line
half-written: it is dropped (and cut off the file) when the checkpoint is reopened, and that
image is computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from alien_hotels.captioning.config import CaptionConfig

# Settings that do not change what is computed.
OPERATIONAL = {
    "method",
    "executor",
    "loader_workers",
    "checkpoint_dir",
    "resume",
    "progress",
    "label_cache_dir",
    "download_label_cache",
    "allow_download",
    "device",
    "dtype",
    "n_jobs",
}


def config_key(cfg: CaptionConfig, device: str, dtype: str) -> str:
    """Hash of the captioning settings (with device and dtype resolved)."""
    settings = {k: v for k, v in cfg.model_dump().items() if k not in OPERATIONAL}
    settings.update(device=device, dtype=dtype)
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Checkpoint:
    def __init__(self, directory: str | Path, key: str, enabled: bool = True):
        self.key = key
        self.path = Path(directory) / f"captions-{key}.jsonl"
        self.rows: dict[str, dict[str, Any]] = {}
        self.enabled = enabled
        if enabled:
            self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut short by a kill: drop it
            with self.path.open("r+b") as fh:
                fh.truncate(end)
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("key") == self.key and "image_id" in row:
                self.rows[str(row["image_id"])] = row  # the latest line wins

    def done(self, image_id: str, path: str) -> bool:
        row = self.rows.get(str(image_id))
        return row is not None and row.get("path") == path

    def add(self, row: dict[str, Any]) -> None:
        row = {"key": self.key, **row, "image_id": str(row["image_id"])}
        if self.done(row["image_id"], row.get("path")):
            return
        self.rows[row["image_id"]] = row
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
