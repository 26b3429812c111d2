"""CLIP embeddings of photos and captions: the caption stage's CLIP model, loaded once here.

`ClipEncoder` is what the room-type zero-shot, `features.kind=clip_image|clip_text` and the
duplicates stage's embedding kind share: the same weights (`caption.clip_model_name` /
`clip_model_path`), the same on-disk check before anything loads (`caption.allow_download`,
`HF_HUB_OFFLINE`), device, dtype and threads. `EmbeddingCache` keeps finished vectors under
`data/checkpoints/embeddings/`, keyed by the weights and each input's content hash, so a
killed run resumes and switching `features` back and forth computes nothing twice.
Docs: docs/finding.md ("Features from embeddings").
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from alien_hotels import modelhub
from alien_hotels.captioning.config import CaptionConfig
from alien_hotels.common import StageError, atomic_path

log = logging.getLogger(__name__)

CACHE_DIR = Path("data/checkpoints/embeddings")


class ClipEncoder:
    """The caption stage's open_clip model, for L2-normalised image and text vectors."""

    def __init__(self, caption: CaptionConfig, purpose: str) -> None:
        import torch

        from alien_hotels.captioning import models

        try:
            clip_ref = models.model_refs(caption)[1]
            found = modelhub.ensure([clip_ref], "caption", caption.allow_download)
        except StageError as exc:
            raise StageError(
                f"{purpose} uses the caption stage's CLIP model, which is not available.\n{exc}"
            ) from None
        located = found[clip_ref.key]
        self.weights = located.label
        self.device, dtype = models.resolve_device(caption)
        self.dtype = getattr(torch, dtype)
        modelhub.set_torch_threads(caption.n_jobs)
        precision = "fp16" if dtype == "float16" else "fp32"
        log.info("loading CLIP model %s from %s", caption.clip_model_name, located.label)
        # The caption stage's loader: checked weights only, never a random-weight fallback.
        model, _, self.preprocess = models.load_clip(caption, located, precision, self.device)
        self.model = model.eval()
        import open_clip

        arch = caption.clip_model_name.split("/", 1)[0]
        self.tokenizer = open_clip.get_tokenizer(
            f"local-dir:{located.path}" if located.path.is_dir() else arch
        )

    def images(self, images: list) -> np.ndarray:
        """One L2-normalised float32 row per PIL image."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            batch = torch.stack([self.preprocess(im) for im in images])
            batch = batch.to(self.device, dtype=self.dtype)
            return F.normalize(self.model.encode_image(batch).float(), dim=-1).cpu().numpy()

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text (CLIP's tokenizer cuts at 77 tokens)."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy()

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


def batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def content_key(data: bytes | str) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


class EmbeddingCache:
    """Vectors by content key for one set of weights and one tower, in a single `.npz`."""

    def __init__(self, directory: Path, weights: str, tower: str) -> None:
        self.path = directory / f"{tower}-{content_key(weights)}.npz"
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    self.vectors = dict(zip(data["key"].tolist(), data["vector"], strict=True))
            except (OSError, ValueError, KeyError) as exc:  # a torn file: start again
                log.warning("embedding cache %s unreadable (%s): starting afresh", self.path, exc)

    def save(self) -> None:
        if not self.vectors:
            return
        keys = sorted(self.vectors)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp, tmp.open("wb") as fh:
            np.savez(fh, key=np.array(keys), vector=np.stack([self.vectors[k] for k in keys]))


def image_embeddings(
    rows: pd.DataFrame,
    caption: CaptionConfig,
    batch_size: int,
    root: Path = Path("."),
    cache_dir: Path = CACHE_DIR,
    progress: bool = True,
) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """(image ids, CLIP image vectors, failures) of `rows` (image_id, path: the manifest's usable
    images), in `rows` order; a file that cannot be read is left out and listed in the failures
    (image_id, path, reason)."""
    from tqdm.auto import tqdm

    from alien_hotels.captioning.images import load_row

    failed: list[dict] = []
    todo = []  # (image_id, path, content key) of the files that can be read
    for image_id, path in zip(rows["image_id"].astype(str), rows["path"].astype(str), strict=True):
        try:
            todo.append((image_id, path, content_key((root / path).read_bytes())))
        except OSError as exc:
            failed.append({"image_id": image_id, "path": path, "reason": "unreadable"})
            log.warning("features: %s: %s", path, exc.strerror or exc)
    encoder = ClipEncoder(caption, "features.kind=clip_image")
    cache = EmbeddingCache(cache_dir, encoder.weights, "image")
    missing = [t for t in todo if t[2] not in cache.vectors]
    log.info("CLIP image embeddings: %d of %d cached", len(todo) - len(missing), len(todo))
    with tqdm(total=len(missing), desc="CLIP images", unit="img", disable=not progress) as bar:
        for batch in batches(iter(missing), batch_size):
            loaded = [
                load_row(root, i, p, caption.max_image_side, caption.max_image_pixels)
                for i, p, _ in batch
            ]
            ok = [(item, key) for item, (_, _, key) in zip(loaded, batch, strict=True) if item.ok]
            for item in loaded:
                if not item.ok:
                    failed.append(
                        {"image_id": item.image_id, "path": item.path, "reason": item.reason}
                    )
            if ok:
                found = encoder.images([item.image for item, _ in ok])
                for (_, key), vector in zip(ok, found, strict=True):
                    cache.vectors[key] = vector
            cache.save()  # after every batch: a killed run resumes here
            bar.update(len(batch))
    bad = {f["image_id"] for f in failed}
    kept = [(i, k) for i, _, k in todo if i not in bad and k in cache.vectors]
    matrix = np.stack([cache.vectors[k] for _, k in kept]) if kept else np.zeros((0, 0), np.float32)
    failures = pd.DataFrame(failed, columns=["image_id", "path", "reason"])
    return [i for i, _ in kept], matrix, failures


def text_embeddings(
    texts: Sequence[str],
    caption: CaptionConfig,
    batch_size: int,
    cache_dir: Path = CACHE_DIR,
    progress: bool = True,
) -> np.ndarray:
    """CLIP text vectors of `texts`, in order (identical texts are encoded once)."""
    from tqdm.auto import tqdm

    encoder = ClipEncoder(caption, "features.kind=clip_text")
    cache = EmbeddingCache(cache_dir, encoder.weights, "text")
    keys = [content_key(t) for t in texts]
    missing = sorted(
        {k: t for k, t in zip(keys, texts, strict=True) if k not in cache.vectors}.items()
    )
    with tqdm(total=len(missing), desc="CLIP texts", unit="text", disable=not progress) as bar:
        for batch in batches(iter(missing), batch_size):
            found = encoder.texts([t for _, t in batch])
            for (key, _), vector in zip(batch, found, strict=True):
                cache.vectors[key] = vector
            cache.save()
            bar.update(len(batch))
    if not keys:
        return np.zeros((0, 0), np.float32)
    return np.stack([cache.vectors[k] for k in keys])
