"""Stage `duplicates`: the same photo more than once in the sample (docs/duplicates.md).

Scraped hotel photos repeat across travel sites: the same picture at several sizes, recompressed,
cropped, mirrored or brightened. Within a hotel they inflate hotel agreement, across hotels they
blur it. Four kinds of duplicates, each found on its own (an image can be in a group of each):

* `exact`: identical decoded pixels (8-bit RGB, upright after the EXIF orientation): the same
  picture as PNG and lossless WebP, or with other metadata. A recompressed JPEG is not exact.
* `perceptual`: pHash or dHash (the `imagehash` library) within `max_hamming` bits; with
  `mirrored`, a horizontally flipped copy counts too (its hash is taken on the flipped image).
* `embedding`: cosine of L2-normalised image embeddings (CLIP's, computed by the caller) at least
  `min_cosine`; model-agnostic (`embedding_groups`).
* `text`: identical captions after lower-casing and collapsing whitespace (the only kind the
  bundled sample, captions without photos, can report).

Groups are the connected components of the pairs found (union-find: A~B and B~C put A, B and C in
one group even when A and C are further apart); a group is named by its smallest image_id, its
representative, and each row's `distance` is to that representative (Hamming bits, 0 for exact and
text, 1 - cosine for embedding). Rows are sorted by kind, group, image_id: the same inputs give
the same bytes in any order.

Scale: pairs are found in tiles of `block_size` x `block_size` with numpy (XOR and popcount of
the packed hashes, or a matrix product of the embeddings), never a Python loop over pairs:
n^2/2 comparisons, about 0.3 s for 10k images and 10 s for 100k (64-bit hashes, one core;
2.5x that with `mirrored`; docs/duplicates.md). Decoding the photos costs more than comparing
them up to about 100k images (4 ms an image).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from alien_hotels.common import Section, rounded

if TYPE_CHECKING:  # Pillow is imported where it runs: the config loader imports this module
    from PIL import Image

log = logging.getLogger(__name__)

KINDS = ("exact", "perceptual", "embedding", "text")
COLUMNS = ["image_id", "group", "kind", "distance"]
# imagehash's own sizes of the grayscale image each hash is computed from.
HIGHFREQ_FACTOR = 4  # phash: a (4 * hash_size)^2 image, DCT, the top-left hash_size^2 block
WHITESPACE = re.compile(r"\s+")


class DuplicatesConfig(Section):
    """`duplicates.*`: which kinds to look for and their thresholds."""

    exact: bool
    perceptual: bool
    hash: Literal["phash", "dhash"]
    # Bits per hash: hash_size^2 (8 -> 64 bits, imagehash's default).
    hash_size: int = Field(ge=4, le=16)
    # Two images are perceptual duplicates within this many differing bits.
    max_hamming: int = Field(ge=0)
    # Also compare each hash with the other image's horizontally flipped one (a mirrored re-post).
    mirrored: bool
    # Embedding cosine (the caller's CLIP image embeddings): duplicates at or above it.
    embedding: bool
    min_cosine: float = Field(gt=0, le=1)
    text: bool
    # Larger images are skipped (too_many_pixels), read from the header before decoding.
    max_image_pixels: int = Field(ge=1)
    # Threads decoding and hashing photos (0: in the calling thread).
    loader_workers: int = Field(ge=0)
    # Rows per side of a comparison tile (memory: block_size^2 bytes per hash word).
    block_size: int = Field(ge=16)
    progress: bool

    @model_validator(mode="after")
    def _check(self) -> DuplicatesConfig:
        bits = self.hash_size**2
        if self.max_hamming >= bits // 2:
            raise ValueError(
                f"duplicates.max_hamming ({self.max_hamming}) must be below half the "
                f"{bits} bits of a hash_size={self.hash_size} hash ({bits // 2}): unrelated "
                "images differ in about half their bits"
            )
        return self


# --- image signatures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """What the comparisons need of one image: the pixel digest and the packed hashes."""

    exact: bytes | None  # blake2b of the decoded pixels (and their size)
    words: np.ndarray | None  # the perceptual hash packed in uint64 words
    mirrored: np.ndarray | None  # the same of the horizontally flipped image


def pixel_digest(image: Image.Image) -> bytes:
    """blake2b (16 bytes) of an 8-bit RGB image's size and pixels."""
    digest = hashlib.blake2b(f"{image.width}x{image.height};".encode(), digest_size=16)
    digest.update(image.tobytes())
    return digest.digest()


def hash_words(bits: np.ndarray) -> np.ndarray:
    """A boolean hash (any shape) packed into big-endian uint64 words, zero-padded."""
    packed = np.packbits(np.asarray(bits, dtype=bool).ravel())
    packed = np.pad(packed, (0, -len(packed) % 8))
    return packed.view(">u8").astype(np.uint64)


def perceptual_hashes(
    image: Image.Image, method: str, hash_size: int, mirrored: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The packed pHash/dHash of `image` and, if `mirrored`, of its left-right mirror.

    The image is reduced to imagehash's working size first (grayscale, Lanczos, `reducing_gap`
    for speed on large photos), so imagehash's own resize is a copy and the mirrored hash costs
    only the hash of the small image flipped.
    """
    import imagehash

    if method == "phash":
        size = (hash_size * HIGHFREQ_FACTOR,) * 2
        fn = lambda img: imagehash.phash(img, hash_size, HIGHFREQ_FACTOR)  # noqa: E731
    else:
        size = (hash_size + 1, hash_size)
        fn = lambda img: imagehash.dhash(img, hash_size)  # noqa: E731
    from PIL import Image

    small = image.convert("L").resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    words = hash_words(fn(small).hash)
    if not mirrored:
        return words, None
    return words, hash_words(fn(small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)).hash)


def signature(image: Image.Image, cfg: DuplicatesConfig) -> Signature:
    """The signature of an 8-bit upright RGB image (`imageio.decode`'s)."""
    exact = pixel_digest(image) if cfg.exact else None
    words = mirrored = None
    if cfg.perceptual:
        words, mirrored = perceptual_hashes(image, cfg.hash, cfg.hash_size, cfg.mirrored)
    return Signature(exact, words, mirrored)


@dataclass
class HashedImages:
    """The signatures of the images that decoded, and how many failed, by reason."""

    image_ids: list[Any] = field(default_factory=list)
    signatures: list[Signature] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)

    def digests(self) -> list[bytes]:
        return [s.exact for s in self.signatures]  # type: ignore[misc]

    def words(self, mirrored: bool = False) -> np.ndarray:
        rows = [s.mirrored if mirrored else s.words for s in self.signatures]
        if not rows:
            return np.zeros((0, 1), dtype=np.uint64)
        return np.stack(rows)  # type: ignore[arg-type]


def _load(root: Path, image_id: Any, path: str, cfg: DuplicatesConfig):
    from alien_hotels.imageio import ImageFailure, decode

    try:
        decoded = decode(
            root / path, max_pixels=cfg.max_image_pixels, limit_name="duplicates.max_image_pixels"
        )
        with decoded.image as image:
            return image_id, signature(image, cfg), None, ""
    except ImageFailure as exc:
        return image_id, None, exc.reason, exc.detail.replace(str(root / path), path)
    except Exception as exc:  # a decoder bug must not stop the run either
        return image_id, None, "corrupt_image", f"{type(exc).__name__}: {exc}"


def hash_images(
    rows: pd.DataFrame, cfg: DuplicatesConfig, root: str | Path = Path(".")
) -> HashedImages:
    """Decode and hash `rows` (image_id, path relative to `root`: the manifest's usable images).

    An image that cannot be decoded is skipped and counted under its reason (`imageio.REASONS`).
    """
    from tqdm.auto import tqdm

    root = Path(root)
    out = HashedImages()
    items = list(zip(rows["image_id"], rows["path"].astype(str), strict=True))
    with (
        ThreadPoolExecutor(max_workers=max(cfg.loader_workers, 1)) as pool,
        tqdm(total=len(items), desc="duplicates", unit="img", disable=not cfg.progress) as bar,
    ):
        if cfg.loader_workers:
            results: Iterable = pool.map(lambda item: _load(root, *item, cfg), items)
        else:
            results = (_load(root, *item, cfg) for item in items)
        for (image_id, sig, reason, detail), (_, path) in zip(results, items, strict=True):
            if sig is None:
                out.failed[reason] = out.failed.get(reason, 0) + 1
                log.warning("duplicates: %s: %s %s", path, reason, detail)
            else:
                out.image_ids.append(image_id)
                out.signatures.append(sig)
            bar.update()
    out.failed = dict(sorted(out.failed.items()))
    return out


# --- pairs and groups ---------------------------------------------------------------------------


def _id_key(value: Any) -> tuple:
    """Image ids in their natural order: numbers by value, then text (a folder's names)."""
    if isinstance(value, bool | np.bool_):
        return (1, str(value))
    if isinstance(value, int | np.integer):
        return (0, int(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return (0, int(value))
    return (1, str(value))


def id_order(image_ids: Sequence[Any]) -> np.ndarray:
    """Indices that sort `image_ids` (ascending, `_id_key`); duplicate ids are an error."""
    keys = [_id_key(v) for v in image_ids]
    if len(set(keys)) != len(keys):
        seen: set = set()
        repeated = next(v for v, k in zip(image_ids, keys, strict=True) if k in seen or seen.add(k))
        raise ValueError(f"image_id {repeated!r} appears more than once")
    return np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)


def _tiles(n: int, block: int) -> Iterable[tuple[int, int, int, int]]:
    for i0 in range(0, n, block):
        for j0 in range(i0, n, block):
            yield i0, min(i0 + block, n), j0, min(j0 + block, n)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between each row of `a` and each of `b` (packed words): (len a, len b),
    uint8 for one word (64 bits), else uint16; one word at a time (no 3-D temporaries)."""
    dist = np.bitwise_count(a[:, None, 0] ^ b[None, :, 0])
    if a.shape[1] > 1:
        dist = dist.astype(np.uint16)
        for word in range(1, a.shape[1]):
            dist += np.bitwise_count(a[:, None, word] ^ b[None, :, word])
    return dist


def hamming_distance(
    a: np.ndarray, b: np.ndarray, a_mirrored: np.ndarray | None, b_mirrored: np.ndarray | None
) -> np.ndarray:
    """Pairwise Hamming distances, with mirrors (if given) the smallest of a~b, a~b', a'~b."""
    dist = _hamming(a, b)
    if a_mirrored is not None and b_mirrored is not None:
        np.minimum(dist, _hamming(a, b_mirrored), out=dist)
        np.minimum(dist, _hamming(a_mirrored, b), out=dist)
    return dist


def hamming_pairs(
    words: np.ndarray,
    max_distance: int,
    mirrored: np.ndarray | None = None,
    block_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of rows of `words` (n, n_words) within `max_distance` bits.

    Tiled: block_size^2 comparisons at a time, so memory stays flat at any n.
    """

    def close(a: slice, b: slice) -> np.ndarray:
        m_a = None if mirrored is None else mirrored[a]
        m_b = None if mirrored is None else mirrored[b]
        return hamming_distance(words[a], words[b], m_a, m_b) <= max_distance

    return _close_pairs(len(words), block_size, close)


def cosine_pairs(
    vectors: np.ndarray, min_cosine: float, block_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of rows of `vectors` (L2-normalised) with cosine >= `min_cosine`."""
    return _close_pairs(
        len(vectors), block_size, lambda a, b: vectors[a] @ vectors[b].T >= min_cosine
    )


def _close_pairs(n: int, block_size: int, close) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of `n` rows where `close(rows_a, rows_b)` (a boolean block) holds,
    a tile of block_size^2 at a time."""
    found_i, found_j = [], []
    for i0, i1, j0, j1 in _tiles(n, block_size):
        hits = close(slice(i0, i1), slice(j0, j1))
        if i0 == j0:
            hits = np.triu(hits, k=1)
        i, j = np.nonzero(hits)
        found_i.append(i + i0)
        found_j.append(j + j0)
    return _concat(found_i), _concat(found_j)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """For each of n items, the smallest index of its connected component under pairs (i, j):
    union-find over the pairs; an item in no pair is its own component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    return smallest[labels]


def _groups_table(
    ids: list[Any], root: np.ndarray, kind: str, distance: Any | None = None
) -> pd.DataFrame:
    """Rows for the items (sorted by id; `root`: each one's representative index) in groups of
    two or more; `distance(members, representatives)` gives each row's distance (else 0)."""
    sizes = np.bincount(root, minlength=len(root))
    members = np.nonzero(sizes[root] > 1)[0]
    reps = root[members]
    dist = np.zeros(len(members)) if distance is None else distance(members, reps)
    table = pd.DataFrame(
        {
            "image_id": pd.Series([ids[k] for k in members], dtype=object),
            "group": pd.Series([ids[k] for k in reps], dtype=object),
            "kind": kind,
            "distance": np.asarray(dist, dtype=np.float64),
        }
    )
    order = np.lexsort((members, reps))  # by group, then image id (both are sorted indices)
    return table.iloc[order].reset_index(drop=True)


def exact_groups(image_ids: Sequence[Any], digests: Sequence[bytes]) -> pd.DataFrame:
    """Images whose decoded pixels are identical (equal `pixel_digest`)."""
    order = id_order(image_ids)
    ids = [image_ids[k] for k in order]
    first: dict[bytes, int] = {}
    root = np.array([first.setdefault(digests[k], n) for n, k in enumerate(order)], dtype=np.int64)
    return _groups_table(ids, root, "exact")


def perceptual_groups(
    image_ids: Sequence[Any],
    words: np.ndarray,
    max_hamming: int,
    mirrored: np.ndarray | None = None,
    block_size: int = 1024,
) -> pd.DataFrame:
    """Images whose packed hashes (`hash_words`, one row each) differ in <= `max_hamming` bits
    (with `mirrored`: also to the other's mirrored hash); distance: bits to the representative."""
    order = id_order(image_ids)
    ids = [image_ids[k] for k in order]
    words = np.asarray(words, dtype=np.uint64)[order]
    mirrored = None if mirrored is None else np.asarray(mirrored, dtype=np.uint64)[order]
    root = components(len(ids), *hamming_pairs(words, max_hamming, mirrored, block_size))

    def distance(members: np.ndarray, reps: np.ndarray) -> np.ndarray:
        out = np.empty(len(members))
        for k, (a, b) in enumerate(zip(members, reps, strict=True)):
            m_a = None if mirrored is None else mirrored[a : a + 1]
            m_b = None if mirrored is None else mirrored[b : b + 1]
            out[k] = hamming_distance(words[a : a + 1], words[b : b + 1], m_a, m_b)[0, 0]
        return out

    return _groups_table(ids, root, "perceptual", distance)


def normalised_vectors(vectors: np.ndarray) -> np.ndarray:
    """`vectors` as float64 rows of unit length; a zero or non-finite row is an error."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (images x dimensions), not {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        raise ValueError(f"embedding row {int(np.argmax(bad))} is zero or not finite")
    return x / norms[:, None]


def embedding_groups(
    image_ids: Sequence[Any], vectors: np.ndarray, min_cosine: float, block_size: int = 1024
) -> pd.DataFrame:
    """Images whose embeddings (one row each, L2-normalised; renormalised here in float64) have
    cosine >= `min_cosine`; distance: 1 - cosine to the representative, 6 decimals. Any model's
    vectors: the caller computes them (CLIP image embeddings in the pipeline)."""
    if len(vectors) != len(image_ids):
        raise ValueError(f"{len(vectors)} embeddings for {len(image_ids)} image ids")
    order = id_order(image_ids)
    ids = [image_ids[k] for k in order]
    x = normalised_vectors(vectors)[order] if len(ids) else np.zeros((0, 1))
    root = components(len(ids), *cosine_pairs(x, min_cosine, block_size))

    def distance(members: np.ndarray, reps: np.ndarray) -> np.ndarray:
        cos = np.einsum("ij,ij->i", x[members], x[reps])
        return np.round(np.clip(1.0 - cos, 0.0, 2.0), 6) + 0.0

    return _groups_table(ids, root, "embedding", distance)


def normalise_text(text: Any) -> str:
    """A caption as compared: lower case, whitespace runs as one space, stripped."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    return WHITESPACE.sub(" ", str(text)).strip().lower()


def text_groups(image_ids: Sequence[Any], texts: Sequence[Any]) -> pd.DataFrame:
    """Images whose captions are identical after `normalise_text` (empty captions are not)."""
    if len(texts) != len(image_ids):
        raise ValueError(f"{len(texts)} captions for {len(image_ids)} image ids")
    order = id_order(image_ids)
    ids = [image_ids[k] for k in order]
    first: dict[str, int] = {}
    root = np.arange(len(ids), dtype=np.int64)
    for n, k in enumerate(order):
        key = normalise_text(texts[k])
        if key:
            root[n] = first.setdefault(key, n)
    return _groups_table(ids, root, "text")


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({"image_id": [], "group": [], "kind": [], "distance": []})


def combine(tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """The kinds' tables as one, in `KINDS` order (each already sorted by group, image_id)."""
    frames = sorted((t for t in tables if len(t)), key=lambda t: KINDS.index(t["kind"].iloc[0]))
    if not frames:
        return empty_table()
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def find_duplicates(
    cfg: DuplicatesConfig,
    hashed: HashedImages | None = None,
    captions: tuple[Sequence[Any], Sequence[Any]] | None = None,
    embeddings: tuple[Sequence[Any], np.ndarray] | None = None,
) -> pd.DataFrame:
    """Every enabled kind that has its input: `hashed` images (exact, perceptual), `captions`
    (image ids, texts) and `embeddings` (image ids, vectors)."""
    tables = []
    if hashed is not None and hashed.image_ids:
        if cfg.exact:
            tables.append(exact_groups(hashed.image_ids, hashed.digests()))
        if cfg.perceptual:
            mirrored = hashed.words(mirrored=True) if cfg.mirrored else None
            tables.append(
                perceptual_groups(
                    hashed.image_ids, hashed.words(), cfg.max_hamming, mirrored, cfg.block_size
                )
            )
    if cfg.embedding and embeddings is not None:
        ids, vectors = embeddings
        tables.append(embedding_groups(list(ids), vectors, cfg.min_cosine, cfg.block_size))
    if cfg.text and captions is not None:
        ids, texts = captions
        tables.append(text_groups(list(ids), list(texts)))
    return combine(tables)


# --- what the groups mean -----------------------------------------------------------------------


def _group_stats(table: pd.DataFrame, hotel_of: Mapping[Any, Any]) -> dict:
    keys = table["kind"].astype(str) + "\x00" + table["group"].map(_id_key).astype(str)
    hotels = table["image_id"].map(lambda i: hotel_of.get(_id_key(i)))
    within = across = unknown = 0
    for _, members in hotels.groupby(keys.to_numpy(), sort=False):
        known = members.dropna()
        if known.nunique() > 1:
            across += 1
        elif len(known) == len(members):
            within += 1
        else:
            unknown += 1
    groups = within + across + unknown
    return {
        "groups": groups,
        "images_in_groups": int(table["image_id"].map(_id_key).nunique()),
        "groups_within_hotel": within,
        "groups_across_hotels": across,
        "groups_hotel_unknown": unknown,
        "share_within_hotel": within / groups if groups else 0.0,
        "share_across_hotels": across / groups if groups else 0.0,
    }


def duplicate_metrics(
    table: pd.DataFrame,
    hotel_of: Mapping[Any, Any],
    checked: Mapping[str, int],
    failed: Mapping[str, int] | None = None,
) -> dict:
    """Groups and images in groups per kind and in `total` (every kind's groups merged where
    they share an image, as `keep_one_per_group` merges them; `n_images` there: the most any
    kind looked at), and the share of groups within one hotel vs across hotels.

    `hotel_of`: image_id -> hotel_id (a group with a member of unknown hotel and no two known
    hotels is `groups_hotel_unknown`); `checked`: images looked at per kind; `failed`:
    undecodable photos by reason."""
    hotels = {_id_key(k): v for k, v in hotel_of.items() if not pd.isna(v)}
    kinds = {}
    for kind, n in checked.items():
        stats = _group_stats(table[table["kind"] == kind], hotels)
        stats["n_images"] = int(n)
        sub = table.loc[table["kind"] == kind, "distance"]
        stats["max_distance"] = float(sub.max()) if len(sub) else 0.0
        kinds[kind] = stats
    # every kind's groups merged where they share an image (as `keep_one_per_group`)
    total = _group_stats(merged_groups(table).assign(kind="total"), hotels)
    total["n_images"] = int(max(checked.values(), default=0))
    total["images_dropped_by_keep_one"] = total["images_in_groups"] - total["groups"]
    failed = dict(failed or {})
    return rounded(
        {
            "kinds": ",".join(checked),
            **kinds,
            "total": total,
            "n_images_failed": int(sum(failed.values())),
            "failed": failed,
        }
    )


def merged_groups(duplicates: pd.DataFrame, kinds: Collection[str] | None = None) -> pd.DataFrame:
    """The groups of the given `kinds` (default: all in the table) merged where they share an
    image (A=B exact and B~C perceptual: one group A, B, C): image_id and group (its smallest
    image_id), one row per image, sorted by group then image_id."""
    table = duplicates if kinds is None else duplicates[duplicates["kind"].isin(list(kinds))]
    by_key = {_id_key(v): v for v in (*table["image_id"], *table["group"])}
    nodes = sorted(by_key)
    index = {node: n for n, node in enumerate(nodes)}
    root = components(
        len(nodes),
        np.array([index[_id_key(v)] for v in table["image_id"]], dtype=np.int64),
        np.array([index[_id_key(v)] for v in table["group"]], dtype=np.int64),
    )
    order = np.lexsort((np.arange(len(nodes)), root))
    return pd.DataFrame(
        {
            "image_id": pd.Series([by_key[nodes[k]] for k in order], dtype=object),
            "group": pd.Series([by_key[nodes[root[k]]] for k in order], dtype=object),
        }
    )


def keep_one_per_group(
    image_ids: Sequence[Any], duplicates: pd.DataFrame, kinds: Collection[str] | None = None
) -> np.ndarray:
    """A boolean mask over `image_ids`: False for every image of a duplicate group but the
    smallest image_id (for `cluster.drop_duplicates`). Groups of the given `kinds` (default:
    all in the table) that share an image are merged first (`merged_groups`), so of A=B (exact)
    and B~C (perceptual) only A stays; a group's images missing from `image_ids` do not count
    (the smallest of those present stays). Images in no group are kept."""
    merged = merged_groups(duplicates, kinds)
    group_of = {
        _id_key(i): _id_key(g) for i, g in zip(merged["image_id"], merged["group"], strict=True)
    }
    keys = [_id_key(v) for v in image_ids]
    best: dict[tuple, tuple] = {}  # per merged group, its smallest image among `image_ids`
    for key in sorted(set(keys)):
        best.setdefault(group_of.get(key, key), key)
    return np.array([best[group_of.get(k, k)] == k for k in keys], dtype=bool)


def representatives(image_ids: pd.Series, table: pd.DataFrame) -> np.ndarray:
    """Per row of `image_ids`, the row of its duplicate group's representative: the group's first
    row here. Groups of every kind are joined (an image in an exact and a perceptual group joins
    both); a row in no group is its own. `table`: image_id, group, kind (duplicates.csv)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    positions = np.arange(len(image_ids))
    row_of = pd.Series(positions, index=image_ids.astype(str).to_numpy())
    row_of = row_of[~row_of.index.duplicated()]
    table = table.assign(row=table["image_id"].astype(str).map(row_of)).dropna(subset=["row"])
    first = table.groupby(["kind", "group"])["row"].transform("min").astype(int).to_numpy()
    rows = table["row"].astype(int).to_numpy()
    graph = coo_matrix((np.ones(len(rows)), (rows, first)), shape=(len(positions),) * 2)
    _, component = connected_components(graph, directed=False)
    # the first row of each component (components are numbered in no useful order)
    return pd.Series(positions).groupby(component).transform("min").to_numpy()
