"""`images.*`: where images come from and how downloads behave (docs/images.md, "Config
reference"; values in conf/images/)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alien_hotels.common import Section


class ImagesConfig(Section):
    """`images.*`: where images come from and how downloads behave."""

    download: bool
    # Each worker may hold one decoding image (up to `max_decode_bytes`) besides its download:
    # 32 x the default budget is 8 GiB, and one process gains nothing from more threads.
    workers: int = Field(ge=1, le=32)
    connect_timeout_s: float = Field(gt=0)
    read_timeout_s: float = Field(gt=0)  # longest wait for any one read
    # Wall time for a whole body, however it trickles (`slow_body`).
    body_timeout_s: float = Field(gt=0, le=3600)
    retries: int = Field(ge=0, le=10)
    backoff_s: float = Field(ge=0)
    max_redirects: int = Field(ge=0, le=30)
    max_bytes: int = Field(ge=1)
    max_pixels: int = Field(ge=1)
    # Memory one image may take while decoding, estimated from its header before any pixel is
    # decoded (`too_large`): workers x this bounds the stage's decoding memory.
    max_decode_bytes: int = Field(ge=1 << 20)
    # HEIF (HEIC: iPhones) and AVIF are decoded and stored as JPEG, as any non-web format.
    formats: list[Literal["JPEG", "PNG", "WEBP", "HEIF", "AVIF", "GIF", "BMP"]]
    # The dataset's resizing: longer side to exactly this many pixels (null keeps the size).
    # At most 4096: an enlargement's memory grows with its square (20000 took 1.3 GB for a photo).
    longer_side: int | None = Field(ge=16, le=4096)
    upscale: bool  # the dataset's script enlarged small photos too
    jpeg_quality: int = Field(ge=1, le=100)
    user_agent: str
    # Certificates are always verified (there is no switch); this only names a CA bundle to trust
    # instead of certifi's.
    ca_bundle: str | None
    # Off: URLs (and redirects) to loopback, private, link-local, ... addresses are refused.
    allow_private_addresses: bool
    per_host_workers: int = Field(ge=1, le=64)  # concurrent requests to one host name
    # Longest Retry-After (429/503) waited for; a longer one is recorded as the status.
    max_retry_after_s: float = Field(ge=0, le=3600)
    respect_opt_out: bool  # X-Robots-Tag: noai / noimageai -> `opted_out`, nothing kept
