"""Cluster cards (alien_hotels.cards, stage `cards`) on constructed data with a known answer.

Three clusters of solid-colour photos whose features put known photos nearest each centroid:
members sit in +/- pairs around the centre (so the mean is the centre) at radius 1, 2, 3, ...,
and a pair's two photos tie, which the image id breaks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from alien_hotels import cards
from alien_hotels.cards import CardsConfig
from alien_hotels.common import StageError
from alien_hotels.features import save_features
from alien_hotels.stages import cards as cards_stage

ROOT = Path(__file__).resolve().parents[1]
DIM = 4
CENTRES = {0: (10.0, 0, 0, 0), 1: (0, 10.0, 0, 0), 2: (0, 0, 10.0, 0)}
RADII = (1.0, 2.0, 3.0)  # a pair of members at each: 6 per cluster
HOSTILE_LABEL = "<script>alert(1)</script> | ../../x\n[link](http://evil) `code`"


def default_cfg() -> CardsConfig:
    """conf/cards/default.yaml, validated (the stage's defaults)."""
    return CardsConfig.model_validate(
        yaml.safe_load((ROOT / "conf/cards/default.yaml").read_text())
    )


def small_cfg(**changes) -> CardsConfig:
    base = default_cfg().updated(
        per_cluster=4, columns=2, thumb_size=48, quality=90, progress=False
    )
    return base.updated(**changes)


def image_id(cluster: int, member: int) -> int:
    """Ids within a cluster ascend with the radius: member 2r and 2r+1 are the pair at RADII[r]."""
    return 1000 + 100 * cluster + member


def colour(cluster: int, member: int) -> tuple[int, int, int]:
    """A distinct colour per photo, far apart in every channel pair."""
    return (40 + 80 * cluster, 30 + 35 * member, 220 - 35 * member)


def features_table() -> tuple[np.ndarray, list[int], list[int]]:
    rows, ids, clusters = [], [], []
    for cluster, centre in CENTRES.items():
        for r, radius in enumerate(RADII):
            axis = 1 + r % (DIM - 1) if cluster == 0 else (r % DIM)
            for sign, member in ((1, 2 * r + 1), (-1, 2 * r)):  # written out of id order
                offset = np.zeros(DIM)
                offset[axis] = sign * radius
                rows.append(np.array(centre) + offset)
                ids.append(image_id(cluster, member))
                clusters.append(cluster)
    return np.array(rows, dtype=np.float32), ids, clusters


@pytest.fixture
def project(tmp_path: Path) -> dict:
    """Files as the pipeline writes them, below tmp_path/project."""
    root = tmp_path / "project"
    images_dir = root / "data/images"
    embedding, ids, clusters = features_table()
    manifest = []
    for image, cluster in zip(ids, clusters, strict=True):
        member = (image - 1000) % 100
        path = images_dir / "chain" / f"{cluster}" / f"{image}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 40), colour(cluster, member)).save(path)
        manifest.append(
            {"image_id": image, "path": path.relative_to(root).as_posix(), "status": "ok"}
        )
    pd.DataFrame(manifest).assign(reason="", url="", image_path="", detail="").to_csv(
        root / "images.csv", index=False
    )
    pd.DataFrame(
        {
            "image_id": ids,
            "hotel_id": 7,
            "room_type": ["bedroom" if c != 2 else "bathroom" for c in clusters],
            "cluster": clusters,
            "cluster_label": [f"label {c}" for c in clusters],
        }
    ).to_csv(root / "cluster_labels.csv", index=False)
    terms = pd.DataFrame(
        {
            "cluster": [0, 1, 2],
            "size": [6, 6, 6],
            "label": ["bedroom: bed · lamp", HOSTILE_LABEL, "NA"],
            "top_terms": ["bed, lamp, pillow", "x " * 300, "sink, towel"],
            "room_types": ["bedroom 100%", "bedroom 100%", "bathroom 100%"],
        }
    )
    terms.to_csv(root / "cluster_terms.csv", index=False)
    save_features(root / "features.npz", embedding, np.array(ids))
    return {"root": root, "images_dir": images_dir, "ids": ids, "clusters": clusters}


def run_stage(project: dict, out: Path, cfg: CardsConfig | None = None, **changes) -> dict:
    root = project["root"]
    args = {
        "labels": root / "cluster_labels.csv",
        "terms": root / "cluster_terms.csv",
        "features_path": root / "features.npz",
        "manifest": root / "images.csv",
        "images_dir": Path("data/images"),
        "out_dir": out,
        "root": root,
        **changes,
    }
    return cards_stage.draw(cfg or small_cfg(), **args)


def tile_colour(card: Image.Image, index: int, cfg: CardsConfig) -> np.ndarray:
    left, top, right, bottom = cards.tile_box(index, cfg)
    inner = card.crop((left + 6, top + 6, right - 6, bottom - 6))
    return np.asarray(inner, dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_default_config_is_valid_and_strict():
    cfg = default_cfg()
    assert cfg.per_cluster == 12 and cfg.distance == "euclidean"
    with pytest.raises(ValidationError, match="per_cluster"):
        cfg.updated(per_cluster=0)
    with pytest.raises(ValidationError, match="extra|thumbs"):
        CardsConfig.model_validate({**cfg.model_dump(), "thumbs": 3})
    with pytest.raises(ValidationError, match="distance"):
        cfg.updated(distance="manhattan")


def test_ranking_known_nearest_and_ties_by_id():
    embedding, ids, clusters = features_table()
    rows = [n for n, c in enumerate(clusters) if c == 0]
    ranked = cards.rank_by_centroid(embedding[rows], [ids[n] for n in rows], "euclidean")
    assert [i for i, _ in ranked] == [str(image_id(0, m)) for m in range(6)]
    assert [d for _, d in ranked] == pytest.approx([1, 1, 2, 2, 3, 3])
    # numeric ids order numerically, not as text
    ranked = cards.rank_by_centroid(np.zeros((3, 2)), [10, 9, 100], "euclidean")
    assert [i for i, _ in ranked] == ["9", "10", "100"]


def test_ranking_cosine():
    # the mean direction is 45 degrees; the vector on it is nearest, then by angle
    vectors = np.array([[1.0, 0.0], [5.0, 5.0], [0.0, 2.0], [3.0, 1.0], [0.0, 0.0]])
    ranked = cards.rank_by_centroid(vectors, ["a", "b", "c", "d", "z"], "cosine")
    assert [i for i, _ in ranked][:2] == ["b", "d"]
    assert dict(ranked)["z"] == pytest.approx(1.0)  # a zero vector: orthogonal to everything


def test_cards_show_the_nearest_photos(project, tmp_path):
    cfg = small_cfg()
    out = tmp_path / "reports/clusters"
    counts = run_stage(project, out, cfg)
    assert counts["cards"] == 3 and counts["photos_shown"] == 12 and counts["unreadable"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.jpg", "1.jpg", "2.jpg", "README.md"]
    for cluster in CENTRES:
        with Image.open(out / f"{cluster}.jpg") as card:
            assert card.format == "JPEG"
            assert card.size == cards.card_size(cfg) == (116, 197)
            card = card.convert("RGB")
            # the radius-1 pair (ids ascending), then the smaller id of the radius-2 pair... 4 in
            # all: members 0, 1, 2, 3; tiles row by row
            for index in range(4):
                expected = colour(cluster, index)
                assert np.abs(tile_colour(card, index, cfg) - expected).max() < 8, (cluster, index)


def test_same_inputs_same_bytes(project, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    run_stage(project, first)
    run_stage(project, second)
    run_stage(project, first)  # a rerun over its own output too
    for name in ("0.jpg", "1.jpg", "2.jpg", "README.md"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    data = (first / "0.jpg").read_bytes()
    assert b"Exif" not in data and b"ICC_PROFILE" not in data


def test_unreadable_and_missing_photos_give_way_to_the_next(project, tmp_path):
    root = project["root"]
    cfg = small_cfg()
    # cluster 0: the nearest photo is not an image, the second has no usable manifest row
    broken = image_id(0, 0)
    (project["images_dir"] / "chain/0" / f"{broken}.png").write_bytes(b"not an image at all")
    manifest = pd.read_csv(root / "images.csv")
    manifest.loc[manifest["image_id"] == image_id(0, 1), "status"] = "failed"
    manifest.to_csv(root / "images.csv", index=False)
    out = tmp_path / "cards"
    counts = run_stage(project, out, cfg)
    assert counts["unreadable"] == 1
    with Image.open(out / "0.jpg") as card:
        card = card.convert("RGB")
        for index, member in enumerate([2, 3, 4, 5]):
            assert np.abs(tile_colour(card, index, cfg) - colour(0, member)).max() < 8
    text = (out / "README.md").read_text()
    assert "| 0 | [0.jpg](0.jpg) | bedroom: bed · lamp | 6 | 4 | 1 |" in text


def test_too_few_photos_leave_grey_slots(project, tmp_path):
    cfg = small_cfg(per_cluster=8, columns=4)  # 6 members: two empty slots
    out = tmp_path / "cards"
    run_stage(project, out, cfg)
    with Image.open(out / "2.jpg") as card:
        assert card.size == cards.card_size(cfg)
        card = card.convert("RGB")
        assert np.abs(tile_colour(card, 5, cfg) - colour(2, 5)).max() < 8
        for index in (6, 7):
            assert np.abs(tile_colour(card, index, cfg) - cards.EMPTY_SLOT).max() < 4


def test_readme_links_and_escapes_hostile_text(project, tmp_path):
    out = tmp_path / "deep/reports/clusters"
    run_stage(project, out)
    text = (out / "README.md").read_text()
    for cluster in CENTRES:
        assert f"[{cluster}.jpg]({cluster}.jpg)" in text
        assert f"![cluster {cluster}]({cluster}.jpg)" in text
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert r"\[link\](http://evil)" in text and r"\`code\`" in text
    assert "\\| ../../x" in text
    assert "| NA |" in text  # a label `NA` stays text
    # each table row has exactly its 8 cells: the `|` in the label did not add one
    rows = [line for line in text.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 1 and rows[0].replace("\\|", "").count("|") == 9
    # the label names no path: nothing appeared outside the cards folder
    assert sorted(p.name for p in out.iterdir()) == ["0.jpg", "1.jpg", "2.jpg", "README.md"]
    assert not list(tmp_path.rglob("x")) and not list(project["root"].parent.rglob("x"))


def test_header_text_is_cleaned_and_fitted():
    face = cards.font(cards.BODY_SIZE)
    assert cards.clean_text("a\nb\x1b[31m\u202ec\td") == "a b[31mc d"
    long = cards.fit_text("word " * 200, 150, face)
    assert long.endswith("...") and face.getlength(long) <= 150
    assert cards.fit_text("short", 150, face) == "short"


def test_no_photos_writes_only_the_readme_and_removes_stale_cards(project, tmp_path):
    root = project["root"]
    manifest = pd.read_csv(root / "images.csv")
    manifest = manifest.assign(path="", status="missing", reason="not_in_local_tree")
    manifest.to_csv(root / "images.csv", index=False)
    out = tmp_path / "cards"
    out.mkdir()
    for name in ("0.jpg", "17.jpg", "notes.jpg", "a5.jpg", "5.jpg.bak", "keep.md"):
        (out / name).write_bytes(b"old")
    counts = run_stage(project, out)
    assert counts == {
        "clusters": 3,
        "cards": 0,
        "photos_available": 0,
        "photos_shown": 0,
        "unreadable": 0,
        "stale_removed": 2,
    }
    names = sorted(p.name for p in out.iterdir())
    assert names == ["5.jpg.bak", "README.md", "a5.jpg", "keep.md", "notes.jpg"]
    text = (out / "README.md").read_text()
    assert "No photos are available" in text and "missing 18" in text


def test_manifest_paths_outside_the_images_folder_are_not_read(project, tmp_path):
    root = project["root"]
    outside = root / "secret.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(outside)
    manifest = pd.read_csv(root / "images.csv")
    nearest = manifest["image_id"] == image_id(1, 0)
    manifest.loc[nearest, "path"] = "data/images/../secret.png"
    manifest.to_csv(root / "images.csv", index=False)
    cfg = small_cfg()
    out = tmp_path / "cards"
    run_stage(project, out, cfg)
    with Image.open(out / "1.jpg") as card:
        card = card.convert("RGB")
        for index, member in enumerate([1, 2, 3, 4]):
            assert np.abs(tile_colour(card, index, cfg) - colour(1, member)).max() < 8


def test_max_clusters_keeps_the_largest(project, tmp_path):
    root = project["root"]
    terms = pd.read_csv(root / "cluster_terms.csv", keep_default_na=False)
    terms["size"] = [6, 9, 7]  # as the terms table says (the card's header shows it)
    terms.to_csv(root / "cluster_terms.csv", index=False)
    out = tmp_path / "cards"
    counts = run_stage(project, out, small_cfg(max_clusters=2))
    assert counts["cards"] == 2
    assert sorted(p.name for p in out.glob("*.jpg")) == ["1.jpg", "2.jpg"]
    assert "Cards for the 2 largest of 3 clusters" in (out / "README.md").read_text()


def test_without_terms_table_summaries_come_from_the_labels(project, tmp_path):
    out = tmp_path / "cards"
    counts = run_stage(project, out, terms=None)
    assert counts["cards"] == 3
    text = (out / "README.md").read_text()
    assert "| 2 | [2.jpg](2.jpg) | label 2 | 6 | 4 | 0 |  | bathroom 100% |" in text


def test_room_type_mix():
    mix = cards.room_type_mix(pd.Series(["bedroom"] * 5 + ["bath"] * 3 + ["view", "", "pool"]))
    assert mix == "bedroom 50%, bath 30%, pool 10%"  # ties by name; empty cells not counted


def test_inconsistent_inputs_name_the_problem(project, tmp_path):
    root = project["root"]
    terms = pd.read_csv(root / "cluster_terms.csv", keep_default_na=False)
    terms[terms["cluster"] != 2].to_csv(root / "cluster_terms.csv", index=False)
    with pytest.raises(StageError, match="cluster\\(s\\) 2 .*rerun the cluster stage"):
        run_stage(project, tmp_path / "a")
    labels = pd.read_csv(root / "cluster_labels.csv", dtype=str)
    labels.loc[0, "cluster"] = "-1"
    labels.to_csv(root / "cluster_labels.csv", index=False)
    with pytest.raises(StageError, match="non-negative integer, got '-1'"):
        run_stage(project, tmp_path / "b")
    labels.loc[0, "cluster"] = "0"
    labels.loc[0, "image_id"] = "5"
    labels.to_csv(root / "cluster_labels.csv", index=False)
    with pytest.raises(StageError, match="have no features"):
        run_stage(project, tmp_path / "c", terms=None)


def test_index_elsewhere_links_into_the_cards_folder(project, tmp_path):
    out, index = tmp_path / "reports/clusters", tmp_path / "reports/cluster_cards.md"
    run_stage(project, out, index=index)
    assert sorted(p.name for p in out.iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]
    text = index.read_text()
    assert "[0.jpg](clusters/0.jpg)" in text and "![cluster 2](clusters/2.jpg)" in text
