"""The duplicates stage on a generated set with planted copies and near-misses.

Precision and recall per kind are printed (run with `-rA` to see them in a passing run):
`.venv/bin/python -m pytest tests/test_duplicates.py -rA -q`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image, ImageDraw, ImageEnhance

from alien_hotels import duplicates as dup
from alien_hotels.duplicates import DuplicatesConfig
from alien_hotels.stages import duplicates as stage
from conftest import ROOT

N_ORIGINALS = 60
SIZE = (192, 144)
# The planted copies of each original, and which kinds must find them.
EXACT = ("png_resaved", "exif_rotated")
PERCEPTUAL = ("resized", "recompressed", "cropped_5pct", "brightness", "flipped")
NEAR_MISSES = ("same_layout_other_colours", "same_layout_other_scene")


def default_cfg(**changes) -> DuplicatesConfig:
    raw = yaml.safe_load((ROOT / "conf/duplicates/default.yaml").read_text())
    return DuplicatesConfig.model_validate({**raw, "progress": False, **changes})


# --- a photo-like generated set -------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the objects of a generated scene are (a room's furniture): kept by a near-miss."""

    shapes: list[tuple[str, tuple[int, int, int, int]]]


def layout(rng: np.random.Generator) -> Layout:
    w, h = SIZE
    shapes = []
    for _ in range(rng.integers(3, 7)):
        x0, y0 = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
        x1 = int(min(w, x0 + rng.integers(25, w // 2)))
        y1 = int(min(h, y0 + rng.integers(25, h // 2)))
        shapes.append((str(rng.choice(["rect", "ellipse"])), (x0, y0, x1, y1)))
    return Layout(shapes)


def scene(rng: np.random.Generator, where: Layout) -> Image.Image:
    """A smooth random background (walls, light) with objects at `where`, colours from `rng`."""
    w, h = SIZE
    grid = rng.integers(0, 256, (int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3))
    img = Image.fromarray(grid.astype(np.uint8)).resize(SIZE, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for shape, box in where.shapes:
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if shape == "rect" else draw.ellipse)(box, fill=colour)
    pixels = np.asarray(img, dtype=np.float64) + rng.normal(0, 6, (h, w, 3))  # sensor noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def copies(img: Image.Image, rng: np.random.Generator) -> dict[str, bytes]:
    """The planted copies of `img`, as file bytes."""
    w, h = img.size
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; displayed upright: identical decoded pixels
    left, top = int(rng.integers(0, w // 20 + 1)), int(rng.integers(0, h // 20 + 1))
    crop = img.crop((left, top, left + w - w // 20, top + h - h // 20))
    return {
        "png_resaved": encoded(img, "PNG", compress_level=1),
        "exif_rotated": encoded(img.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif),
        "resized": encoded(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "PNG"),
        "recompressed": encoded(img, "JPEG", quality=60),
        "cropped_5pct": encoded(crop, "PNG"),
        "brightness": encoded(ImageEnhance.Brightness(img).enhance(1.25), "PNG"),
        "flipped": encoded(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"),
    }


@dataclass
class Generated:
    rows: pd.DataFrame  # image_id, path, original (its original's id), variant, hotel_id
    root: Path


def generate(root: Path, n_originals: int = N_ORIGINALS, seed: int = 0) -> Generated:
    rng = np.random.default_rng(seed)
    rows = []
    (root / "img").mkdir(parents=True, exist_ok=True)

    def add(data: bytes, original: int, variant: str, hotel: int, ext: str = "png") -> None:
        image_id = 1000 + len(rows)
        path = f"img/{image_id}.{ext}"
        (root / path).write_bytes(data)
        rows.append((image_id, path, original, variant, hotel))

    for n in range(n_originals):
        where = layout(rng)
        img = scene(rng, where)
        hotel = n % 10
        add(encoded(img, "PNG"), n, "original", hotel)
        for variant, data in copies(img, rng).items():
            ext = "jpg" if variant == "recompressed" else "png"
            add(data, n, variant, hotel, ext)
        # near-misses: other pictures of the same layout (another room of the same design)
        add(encoded(scene(rng, where), "PNG"), -1 - 2 * n, NEAR_MISSES[0], hotel)
        other = Layout([(s, box) for s, box in where.shapes[:2]] + layout(rng).shapes[:2])
        add(encoded(scene(rng, other), "PNG"), -2 - 2 * n, NEAR_MISSES[1], hotel)
    cols = ["image_id", "path", "original", "variant", "hotel_id"]
    return Generated(pd.DataFrame(rows, columns=cols), root)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Generated:
    return generate(tmp_path_factory.mktemp("duplicates"))


# --- scoring --------------------------------------------------------------------------------------


def pairs_of(table: pd.DataFrame) -> set[tuple[int, int]]:
    out = set()
    for _, members in table.groupby("group"):
        ids = sorted(members["image_id"])
        out |= {(a, b) for k, a in enumerate(ids) for b in ids[k + 1 :]}
    return out


def score(table: pd.DataFrame, rows: pd.DataFrame, variants: tuple[str, ...]) -> dict:
    """Pair precision over every predicted pair (a pair is right when both images come from
    one original, near-misses never do), and recall of each planted variant: the share of its
    copies grouped with their original."""
    original = dict(zip(rows["image_id"], rows["original"], strict=True))
    predicted = pairs_of(table)
    right = sum(original[a] == original[b] for a, b in predicted)
    group = dict(zip(table["image_id"], table["group"], strict=True))
    first = rows[rows["variant"] == "original"].set_index("original")["image_id"]
    recall = {}
    for variant in variants:
        planted = rows[rows["variant"] == variant]
        found = [
            group.get(i) is not None and group.get(i) == group.get(first[o])
            for i, o in zip(planted["image_id"], planted["original"], strict=True)
        ]
        recall[variant] = float(np.mean(found))
    return {"pairs": len(predicted), "precision": right / len(predicted), "recall": recall}


def show(title: str, scores: dict) -> None:
    """Precision and recall, printed in the test output (`pytest -rA`)."""
    recall = "  ".join(f"{k}={v:.2f}" for k, v in scores["recall"].items())
    print(f"{title:<34} pairs={scores['pairs']:<5} precision={scores['precision']:.3f}  {recall}")


# --- tests ----------------------------------------------------------------------------------------


def test_default_config_validates_and_rejects_a_useless_threshold():
    cfg = default_cfg()
    assert cfg.hash in ("phash", "dhash")
    with pytest.raises(ValueError, match=r"duplicates\.max_hamming"):
        default_cfg(max_hamming=cfg.hash_size**2 // 2)
    with pytest.raises(ValueError, match="extra"):
        default_cfg(unknown_key=1)


def test_exact_finds_identical_pixels_only(generated, hashed):
    rows = generated.rows
    table = dup.exact_groups(hashed.image_ids, hashed.digests())
    scores = score(table, rows, (*EXACT, "recompressed", "resized"))
    show("exact", scores)
    assert scores["precision"] == 1.0
    assert scores["recall"]["png_resaved"] == 1.0
    assert scores["recall"]["exif_rotated"] == 1.0  # decoded upright: the same pixels
    assert scores["recall"]["recompressed"] == 0.0  # a recompressed JPEG is not exact
    assert scores["recall"]["resized"] == 0.0
    assert (table["distance"] == 0).all()


@pytest.fixture(scope="module")
def hashed_by(generated):
    """The generated set hashed with each method (with mirrored hashes), hashed once."""
    cache: dict[str, dup.HashedImages] = {}

    def get(method: str) -> dup.HashedImages:
        if method not in cache:
            cfg = default_cfg(hash=method, mirrored=True, loader_workers=2)
            cache[method] = dup.hash_images(generated.rows, cfg, generated.root)
        return cache[method]

    return get


@pytest.fixture(scope="module")
def hashed(hashed_by) -> dup.HashedImages:
    return hashed_by(default_cfg().hash)


@pytest.mark.parametrize("mirrored", [True, False])
@pytest.mark.parametrize("method", ["phash", "dhash"])
def test_perceptual_precision_and_recall(generated, hashed_by, method, mirrored):
    cfg = default_cfg(hash=method, mirrored=mirrored, exact=False)
    table = dup.find_duplicates(cfg, hashed_by(method))
    scores = score(table, generated.rows, (*EXACT, *PERCEPTUAL))
    show(f"perceptual {method} mirrored={mirrored} <={cfg.max_hamming}", scores)
    assert scores["precision"] >= 0.95  # near-misses included
    for variant in (*EXACT, "resized", "recompressed", "brightness"):
        assert scores["recall"][variant] >= 0.9, variant
    assert scores["recall"]["cropped_5pct"] >= 0.7
    if mirrored:
        assert scores["recall"]["flipped"] >= 0.95
    else:
        assert scores["recall"]["flipped"] <= 0.1


def test_perceptual_threshold_sweep(generated, hashed_by):
    """How the default hash's precision and recall move with max_hamming (docs/duplicates.md)."""
    cfg = default_cfg()
    hashed = hashed_by(cfg.hash)
    mirrored = hashed.words(mirrored=True) if cfg.mirrored else None
    by_threshold = {}
    for threshold in (4, 6, 8, 10, 12):
        table = dup.perceptual_groups(hashed.image_ids, hashed.words(), threshold, mirrored)
        by_threshold[threshold] = score(table, generated.rows, PERCEPTUAL)
        show(f"sweep {cfg.hash} mirrored={cfg.mirrored} <={threshold}", by_threshold[threshold])
    recall = [np.mean(list(s["recall"].values())) for s in by_threshold.values()]
    assert recall == sorted(recall)  # a wider threshold never finds fewer copies
    assert by_threshold[cfg.max_hamming]["precision"] >= 0.95


def test_perceptual_distance_is_to_the_representative(generated, hashed):
    cfg = default_cfg()
    table = dup.perceptual_groups(
        hashed.image_ids, hashed.words(), cfg.max_hamming, hashed.words(mirrored=True), 7
    )
    assert (table.loc[table["image_id"] == table["group"], "distance"] == 0).all()
    assert (table["group"] == table.groupby("group")["image_id"].transform("min")).all()
    # the tiles' size does not change the answer
    again = dup.perceptual_groups(
        hashed.image_ids, hashed.words(), cfg.max_hamming, hashed.words(mirrored=True), 4096
    )
    pd.testing.assert_frame_equal(table, again)


def test_hamming_pairs_match_brute_force():
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**63, (300, 2), dtype=np.uint64)
    words[150:] = words[:150] ^ (np.uint64(1) << rng.integers(0, 64, (150, 2)).astype(np.uint64))
    mirrored = rng.integers(0, 2**63, (300, 2), dtype=np.uint64)
    i, j = dup.hamming_pairs(words, 3, mirrored, block_size=64)
    bits = np.unpackbits(words.view(np.uint8), axis=1)
    mbits = np.unpackbits(mirrored.view(np.uint8), axis=1)
    expect = set()
    for a in range(300):
        for b in range(a + 1, 300):
            d = min(
                (bits[a] != bits[b]).sum(), (bits[a] != mbits[b]).sum(), (mbits[a] != bits[b]).sum()
            )
            if d <= 3:
                expect.add((a, b))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == expect
    assert len(expect) >= 150


def test_embedding_groups_on_constructed_vectors():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(50, 64))
    base /= np.linalg.norm(base, axis=1, keepdims=True)  # random: |cos| < 0.6 between them
    near = base[:10] + 0.02 * rng.normal(size=(10, 64))  # cos ~0.99 to their base
    vectors = np.vstack([base, near / np.linalg.norm(near, axis=1, keepdims=True)])
    ids = [*range(100, 150), *range(10, 20)]  # each copy has the smaller id: the representative
    table = dup.embedding_groups(ids, vectors, min_cosine=0.9, block_size=16)
    expected = {(10 + k, 100 + k) for k in range(10)}
    assert pairs_of(table) == expected
    assert set(table["group"]) == set(range(10, 20))
    assert table["kind"].eq("embedding").all()
    reps = table[table["image_id"] == table["group"]]
    assert (reps["distance"] == 0).all()
    members = table[table["image_id"] != table["group"]]
    cos = np.einsum("ij,ij->i", vectors[:10], vectors[50:])
    np.testing.assert_allclose(members["distance"], np.round(1 - cos, 6), atol=1e-6)
    precision = 1.0 if pairs_of(table) <= expected else 0.0
    recall = len(pairs_of(table) & expected) / len(expected)
    scores = {"pairs": len(pairs_of(table)), "precision": precision, "recall": {"planted": recall}}
    show("embedding (constructed) cos>=0.9", scores)
    assert recall == 1.0
    # not normalised: renormalised; a zero row is an error
    scaled = dup.embedding_groups(ids, vectors * 3.0, min_cosine=0.9)
    pd.testing.assert_frame_equal(scaled, table)
    with pytest.raises(ValueError, match="zero or not finite"):
        dup.embedding_groups(ids, np.vstack([vectors[:-1], np.zeros(64)]), 0.9)
    assert dup.embedding_groups(ids, vectors, min_cosine=0.999).empty


def test_chained_pairs_form_one_group():
    # a ~ b ~ c with a and c apart: union-find puts them in one group named by the smallest id
    angles = np.array([0.3, 0.0, 0.6])  # of images 5, 3, 7
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    table = dup.embedding_groups([5, 3, 7], x, min_cosine=np.cos(0.35))
    assert table["image_id"].tolist() == [3, 5, 7]
    assert table["group"].tolist() == [3, 3, 3]
    np.testing.assert_allclose(table["distance"], [0, 1 - np.cos(0.3), 1 - np.cos(0.6)], atol=1e-6)


def test_text_duplicates():
    ids = [5, 3, 9, 1, 4, 8]
    texts = ["A bed  and a desk", "a bed and a desk ", "pool", "", "", "A BED and a desk"]
    table = dup.text_groups(ids, texts)
    assert table.to_dict("list") == {
        "image_id": [3, 5, 8],
        "group": [3, 3, 3],
        "kind": ["text"] * 3,
        "distance": [0.0] * 3,
    }  # empty captions are not duplicates of each other
    right = {(3, 5), (3, 8), (5, 8)}
    show("text", {"pairs": 3, "precision": float(pairs_of(table) == right), "recall": {}})


def test_stage_with_embeddings(tmp_path):
    pd.DataFrame({"image_id": [1, 2, 3], "hotel_id": [7, 8, 8]}).to_csv(
        tmp_path / "sample.csv", index=False
    )
    vectors = np.array([[1.0, 0.0], [0.999, 0.04], [0.0, 1.0]])

    def find(cfg):
        return stage.find(
            cfg,
            manifest=tmp_path / "none.csv",
            sample=tmp_path / "sample.csv",
            captions=None,
            out=tmp_path / "dup.csv",
            metrics=tmp_path / "dup.json",
            root=tmp_path,
            embeddings=([3, 2, 1], vectors),
        )

    result = find(default_cfg(embedding=True))
    table = pd.read_csv(tmp_path / "dup.csv")
    assert table["image_id"].tolist() == [2, 3] and table["group"].tolist() == [2, 2]
    assert result["kinds"] == "embedding"
    assert result["embedding"]["share_across_hotels"] == 0.0  # 2 and 3: both hotel 8
    # not asked for: no embedding kind even when vectors are given
    off = find(default_cfg())
    assert off["kinds"] == "" and pd.read_csv(tmp_path / "dup.csv").empty


def test_keep_one_per_group_merges_kinds():
    table = pd.DataFrame(
        {
            "image_id": [1, 4, 4, 6, 2, 9],
            "group": [1, 1, 4, 4, 2, 2],
            "kind": ["exact", "exact", "perceptual", "perceptual", "text", "text"],
            "distance": 0.0,
        }
    )
    merged = dup.merged_groups(table)
    assert merged.to_dict("list") == {"image_id": [1, 4, 6, 2, 9], "group": [1, 1, 1, 2, 2]}
    ids = [9, 6, 4, 1, 2, 3]
    assert dup.keep_one_per_group(ids, table).tolist() == [False, False, False, True, True, True]
    only = dup.keep_one_per_group(ids, table, kinds=["perceptual"])
    assert only.tolist() == [True, False, True, True, True, True]
    # a group's representative missing from the images: the smallest present stays
    assert dup.keep_one_per_group([9, 6, 4], table).tolist() == [True, False, True]
    assert dup.keep_one_per_group(ids, dup.empty_table()).all()


def test_metrics_within_and_across_hotels():
    table = pd.DataFrame(
        {
            "image_id": [1, 2, 3, 4, 5, 6, 7, 1, 2],
            "group": [1, 1, 3, 3, 5, 5, 5, 1, 1],
            "kind": ["perceptual"] * 7 + ["text"] * 2,
            "distance": [0, 2, 0, 1, 0, 0, 4, 0, 0],
        }
    )
    hotels = {1: "a", 2: "a", 3: "a", 4: "b", 5: "c", 6: "c", 7: "c"}
    m = dup.duplicate_metrics(table, hotels, {"perceptual": 20, "text": 30})
    p = m["perceptual"]
    assert (p["groups"], p["images_in_groups"], p["n_images"]) == (3, 7, 20)
    assert (p["groups_within_hotel"], p["groups_across_hotels"]) == (2, 1)
    assert p["share_within_hotel"] == pytest.approx(0.6667)
    assert p["share_across_hotels"] == pytest.approx(0.3333)
    assert p["max_distance"] == 4
    assert m["text"]["groups"] == 1 and m["text"]["share_within_hotel"] == 1.0
    # text {1, 2} is perceptual {1, 2} again: merged, 3 groups, 4 images dropped by keep-one
    assert (m["total"]["groups"], m["total"]["images_in_groups"]) == (3, 7)
    assert m["total"]["images_dropped_by_keep_one"] == 4
    unknown = dup.duplicate_metrics(table, {1: "a"}, {"perceptual": 20, "text": 30})
    assert unknown["perceptual"]["groups_hotel_unknown"] == 3


def write_inputs(root: Path, rows: pd.DataFrame, corrupt: bool = False) -> dict:
    """A manifest, sample and captions table like the pipeline's, under `root`."""
    manifest = rows.assign(status="ok", reason="", url="", image_path="", detail="")
    manifest = manifest[["image_id", "path", "status", "reason", "url", "image_path", "detail"]]
    extra = []
    if corrupt:
        (root / "img/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (root / "img/text.png").write_text("hello")
        extra = [
            (1, "img/broken.jpg", "ok"),
            (2, "img/text.png", "ok"),
            (3, "img/gone.png", "ok"),
            (4, "", "missing"),
        ]
    extra_rows = pd.DataFrame(extra, columns=["image_id", "path", "status"])
    manifest = pd.concat([manifest, extra_rows], ignore_index=True).fillna("")
    manifest.to_csv(root / "images.csv", index=False)
    sample = rows[["image_id", "hotel_id"]]
    sample.to_csv(root / "sample.csv", index=False)
    captions = pd.DataFrame(
        {
            "image_id": rows["image_id"],
            "caption": [f"a room number {o % 7}" for o in rows["original"]],
        }
    )
    captions.to_csv(root / "captions.csv", index=False)
    return {
        "manifest": root / "images.csv",
        "sample": root / "sample.csv",
        "captions": root / "captions.csv",
        "root": root,
    }


def subset(generated: Generated, n: int) -> pd.DataFrame:
    return generated.rows[generated.rows["original"].abs() < n].reset_index(drop=True)


def test_stage_is_deterministic_and_order_free(generated, tmp_path):
    rows = subset(generated, 12)
    cfg = default_cfg(loader_workers=2)
    outs = []
    for n, order in enumerate([rows, rows.sample(frac=1, random_state=1), rows]):
        inputs = write_inputs(generated.root, order)
        out, metrics = tmp_path / f"dup{n}.csv", tmp_path / f"dup{n}.json"
        stage.find(cfg, out=out, metrics=metrics, **inputs)
        outs.append((out.read_bytes(), metrics.read_bytes()))
    assert outs[0] == outs[1] == outs[2]
    table = pd.read_csv(tmp_path / "dup0.csv")
    assert table.columns.tolist() == dup.COLUMNS
    assert list(dict.fromkeys(table["kind"])) == ["exact", "perceptual", "text"]
    sort_key = table["kind"].map(dup.KINDS.index)
    assert (
        table.assign(k=sort_key)
        .sort_values(["k", "group", "image_id"])
        .index.is_monotonic_increasing
    )
    m = json.loads(outs[0][1])
    assert m["perceptual"]["n_images"] == len(rows)
    assert m["text"]["groups"] == 7  # the captions repeat every 7 originals
    assert m["n_images_failed"] == 0


def test_stage_skips_undecodable_photos(generated, tmp_path):
    rows = subset(generated, 3)
    inputs = write_inputs(generated.root, rows, corrupt=True)
    out, metrics = tmp_path / "dup.csv", tmp_path / "dup.json"
    result = stage.find(default_cfg(text=False), out=out, metrics=metrics, **inputs)
    assert result["n_images_failed"] == 3
    assert result["failed"] == {"corrupt_image": 1, "missing_file": 1, "not_an_image": 1}
    assert result["exact"]["n_images"] == len(rows)
    assert set(pd.read_csv(out)["image_id"]) <= set(rows["image_id"])


def test_stage_without_photos_reports_text_duplicates(tmp_path):
    pd.DataFrame({"image_id": [3, 1, 2], "hotel_id": [7, 7, 8]}).to_csv(
        tmp_path / "sample.csv", index=False
    )
    pd.DataFrame({"image_id": [3, 1, 2], "caption": ["A bed", "a  bed", "a pool"]}).to_csv(
        tmp_path / "captions.csv", index=False
    )
    out, metrics = tmp_path / "dup.csv", tmp_path / "dup.json"
    result = stage.find(
        default_cfg(),
        manifest=tmp_path / "no_manifest.csv",
        sample=tmp_path / "sample.csv",
        captions=tmp_path / "captions.csv",
        out=out,
        metrics=metrics,
        root=tmp_path,
    )
    assert pd.read_csv(out).to_dict("list") == {
        "image_id": [1, 3],
        "group": [1, 1],
        "kind": ["text", "text"],
        "distance": [0.0, 0.0],
    }
    assert result["kinds"] == "text"
    assert result["text"]["share_within_hotel"] == 1.0
    assert json.loads(metrics.read_text()) == result


def test_bundled_sample_captions(tmp_path):
    """The bundled sample's captions (git-tracked): every pair of identical captions is found."""
    bundled = pd.read_csv(ROOT / "data/bundled/hotels_sample.csv")
    sample, captions = tmp_path / "sample.csv", tmp_path / "captions.csv"
    bundled[["image_id", "hotel_id"]].to_csv(sample, index=False)
    bundled.rename(columns={"description": "caption"})[["image_id", "caption"]].to_csv(
        captions, index=False
    )
    result = stage.find(
        default_cfg(),
        manifest=tmp_path / "none.csv",
        sample=sample,
        captions=captions,
        out=tmp_path / "dup.csv",
        metrics=tmp_path / "dup.json",
        root=tmp_path,
    )
    normalised = bundled["description"].dropna().str.lower().str.split().str.join(" ")
    normalised = normalised[normalised != ""]
    repeated = normalised[normalised.duplicated(keep=False)]
    assert result["text"]["groups"] == repeated.nunique() >= 1
    assert result["text"]["images_in_groups"] == len(repeated)
    print(f"bundled sample: {result['text']}")
    assert result["text"]["groups"] >= 1
