"""caption.executor=ray: caption batches on Ray actors, the checkpoint and tables kept here.

A task is one or more whole caption batches (the same `caption.batch_size` slices of the
manifest as the local executor) carrying each image's file bytes. The worker writes them under
a private scratch folder at their manifest paths and decodes them with the local executor's
loader (`load_row`), then runs the same per-batch code (`caption_batch`), so captions, failure
reasons and details are the local executor's. The driver appends the returned rows to the same
checkpoint; the tables are then collected from it exactly as in a local run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path, PurePosixPath
from typing import Any

from alien_hotels.captioning.checkpoint import Checkpoint
from alien_hotels.captioning.config import CaptionConfig
from alien_hotels.captioning.images import load_row, prefetch
from alien_hotels.captioning.run import caption_batch, load_engine
from alien_hotels.common import StageError
from alien_hotels.distributed.config import RayConfig
from alien_hotels.distributed.pool import ActorPool, Worker, ray_session


def scratch_path(path: str) -> str:
    """Where a manifest path goes under the worker's scratch folder: the path itself when it is
    relative and stays inside, else a sanitised copy (nothing is written outside)."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.parts and not pure.is_absolute() and ".." not in pure.parts:
        return path
    inside = [part.replace("..", "__") for part in pure.parts if part != "/"]
    return "/".join(["_outside", *inside])


SCRATCH_PREFIX = "alien-hotels-caption-"


def sweep_stale_scratch(parent: Path) -> list[Path]:
    """Remove the scratch folders of this user's workers that died mid-task (SIGKILL, the OOM
    killer: no `finally` ran, their images stayed). A folder's name carries its worker's pid;
    those of live processes, and names without one, are left alone."""
    removed = []
    for folder in parent.glob(f"{SCRATCH_PREFIX}*-*"):
        pid = folder.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        try:
            if not pid.isdigit() or folder.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:  # no such process: its worker is gone
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        except OSError:  # alive under another user, or the folder went meanwhile
            continue
    return removed


def read_bytes(path: Path) -> bytes | None:
    """A file's bytes; None when it cannot be read (the worker then reports missing_file)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


class CaptionWorker(Worker):
    """Holds the interrogator; `run` captions whole batches of shipped images."""

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg
        self.engine = None

    def load(self) -> dict[str, Any]:
        from alien_hotels.captioning.models import check_models, resolve_device

        device, dtype = resolve_device(self.cfg)
        weights = check_models(self.cfg)
        self.engine = load_engine(self.cfg, device, dtype, weights)
        # the labels (`repo@commit` or path) go into captions.csv: every node must have the same
        labels = [weights.caption.label, weights.clip.label]
        return {"device": device, "dtype": dtype, "weights": weights, "weight_labels": labels}

    def run(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        cfg = self.cfg
        done = {tuple(pair) for pair in payload["done"]}
        rows: list[dict[str, Any]] = []
        # a worker killed mid-task on this node left its folder: the next task removes it
        sweep_stale_scratch(Path(tempfile.gettempdir()))
        with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as scratch:
            root = Path(scratch)
            items, originals = [], []
            for batch in payload["batches"]:
                for image_id, path, data in batch:
                    local = scratch_path(path)
                    if data is not None:
                        (root / local).parent.mkdir(parents=True, exist_ok=True)
                        (root / local).write_bytes(data)
                    items.append((root, image_id, local, cfg.max_image_side, cfg.max_image_pixels))
                    originals.append(path)
            loaded = prefetch(items, load_row, cfg.loader_workers, ahead=2 * cfg.batch_size)
            position = 0
            for batch in payload["batches"]:
                got = []
                for _ in batch:
                    row, path = next(loaded), originals[position]
                    position += 1
                    if row.path != path:  # a sanitised scratch path: report the manifest's
                        detail = row.detail.replace(row.path, path)
                        row = dataclasses.replace(row, path=path, detail=detail)
                    got.append(row)
                rows.extend(caption_batch(self.engine, cfg, got, lambda i, p: (i, p) in done))
        return rows


class RayCaptioner:
    """The driver side: same interface as `LocalCaptioner` (device, dtype, weights, run,
    metrics); the caption stage hands it to `caption_images` for `caption.executor=ray`."""

    def __init__(self, cfg: CaptionConfig, ray_cfg: RayConfig | None):
        self.cfg = cfg
        self.ray_cfg = ray_cfg
        self.batches_per_task = 1
        if ray_cfg is not None and ray_cfg.batch_size is not None:
            if ray_cfg.batch_size % cfg.batch_size:
                raise StageError(
                    f"ray.batch_size={ray_cfg.batch_size} must be a multiple of "
                    f"caption.batch_size={cfg.batch_size}: tasks carry whole caption batches, so "
                    "captions do not depend on the executor"
                )
            self.batches_per_task = ray_cfg.batch_size // cfg.batch_size
        self._stack = ExitStack()
        try:
            self._stack.enter_context(ray_session(ray_cfg, "caption"))
            assert ray_cfg is not None  # ray_session raised otherwise
            self.pool = self._stack.enter_context(
                ActorPool(
                    CaptionWorker,
                    (cfg,),
                    ray_cfg,
                    "caption",
                    agree_on=("device", "dtype", "weight_labels"),
                )
            )
            info = self.pool.start()
        except BaseException:
            self._stack.close()
            raise
        self.device, self.dtype, self.weights = info["device"], info["dtype"], info["weights"]

    def __enter__(self) -> RayCaptioner:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def metrics(self) -> dict[str, Any]:
        return {**self.pool.metrics(), "ray_batches_per_task": self.batches_per_task}

    def run(self, root: Path, ids, paths, todo, checkpoint: Checkpoint, already: int) -> int:
        from tqdm import tqdm

        per_task = self.batches_per_task
        tasks = [todo[i : i + per_task] for i in range(0, len(todo), per_task)]
        counts = {"ok": 0, "failed": 0}

        def payload(task) -> dict[str, Any]:
            return {
                "batches": [
                    [(ids[i], paths[i], read_bytes(root / paths[i])) for i in batch]
                    for batch in task
                ],
                "done": [
                    (ids[i], paths[i])
                    for batch in task
                    for i in batch
                    if checkpoint.done(ids[i], paths[i])
                ],
            }

        with tqdm(
            total=len(ids),
            initial=already,
            unit="img",
            desc="caption (ray)",
            disable=not self.cfg.progress,
            smoothing=0.1,
        ) as bar:

            def on_result(task, rows: list[dict[str, Any]]) -> None:
                for row in rows:
                    if checkpoint.done(row["image_id"], row["path"]):
                        continue
                    checkpoint.add(row)
                    counts["ok" if row["status"] == "ok" else "failed"] += 1
                    bar.update(1)
                bar.set_postfix(counts, workers=self.pool.alive, refresh=False)

            self.pool.run(tasks, payload, on_result)
        return counts["ok"]
