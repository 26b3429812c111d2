"""Decode images for captioning in background threads; bad files become failure reasons.

Decoding is the one loader's (`alien_hotels.imageio`): 8-bit RGB in display orientation, no
larger than `caption.max_image_side`; what cannot be used gets one of `imageio.REASONS`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from alien_hotels.imageio import ImageFailure, load_rgb


@dataclass(frozen=True)
class Loaded:
    """One manifest row after decoding: `image` or a failure `reason` (+ `detail`)."""

    image_id: str
    path: str
    image: Image.Image | None = None
    reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.image is not None


def load_row(root: Path, image_id: str, path: str, max_side: int, max_pixels: int) -> Loaded:
    try:
        image = load_rgb(
            root / path,
            max_pixels=max_pixels,
            max_side=max_side,
            limit_name="caption.max_image_pixels",
        )
    except ImageFailure as exc:  # details name the manifest path, not where the repo lives
        detail = exc.detail.replace(str(root / path), path)
        return Loaded(image_id, path, reason=exc.reason, detail=detail)
    except Exception as exc:  # a decoder bug must not stop the run either
        return Loaded(image_id, path, reason="corrupt_image", detail=f"{type(exc).__name__}: {exc}")
    return Loaded(image_id, path, image=image)


def prefetch(
    items: Iterable, load: Callable[..., Loaded], workers: int, ahead: int
) -> Iterator[Loaded]:
    """`load(*item)` for each item in order, decoded by `workers` background threads at most
    `ahead` items in advance (workers=0: in the calling thread)."""
    if workers <= 0:
        for item in items:
            yield load(*item)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-loader") as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(load, *item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
