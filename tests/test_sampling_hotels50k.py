"""`sample` on Hotels-50K metadata (synthetic, same files and columns as the published set)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from alien_hotels.common import StageError
from alien_hotels.datagen.hotels50k import generate
from alien_hotels.datasets import read_dataset
from alien_hotels.sampling import sample_hotels
from alien_hotels.stages.paths import StagePaths
from alien_hotels.stages.sample import run as run_sample
from alien_hotels.tables import SAMPLE_COLUMNS
from conftest import ROOT, compose


@pytest.fixture(scope="module")
def meta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("h50k")
    generate(root, rows=30_000, hotels=600, chains=8, seed=1)
    return root / "dataset"


def _copy(meta: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in meta.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def _sample(path: Path, *overrides: str):
    params = compose("data=hotels50k", f"data.path={path}", *overrides)
    return sample_hotels(read_dataset(params.data), params.data)


def test_sample_is_seeded_joined_and_in_range(meta: Path):
    sample, stats = _sample(meta)
    again, _ = _sample(meta)
    other, _ = _sample(meta, "data.seed=7")
    pd.testing.assert_frame_equal(sample, again)
    assert set(other["hotel_id"]) != set(sample["hotel_id"])

    assert list(sample.columns) == SAMPLE_COLUMNS
    assert sample["hotel_id"].nunique() == 10 == stats.hotels_sampled
    train = pd.read_csv(meta / "train_set.csv")
    counts = train["hotel_id"].value_counts()
    chosen = counts[sample["hotel_id"].unique()]
    assert chosen.between(30, 60).all()
    # Every image of each chosen hotel is there, nothing else.
    expected = train[train["hotel_id"].isin(chosen.index)]
    assert set(sample["image_id"]) == set(expected["image_id"])
    assert stats.rows_kept == len(expected) and stats.as_dict()["rows_read"] == 30_000
    assert stats.hotels_eligible == int(counts.between(30, 60).sum())

    hotels = pd.read_csv(meta / "hotel_info.csv").set_index("hotel_id")
    chains = pd.read_csv(meta / "chain_info.csv").set_index("chain_id")["chain_name"]
    row = sample.iloc[0]
    assert row["hotel_name"] == hotels.loc[row["hotel_id"], "hotel_name"]
    assert row["chain_id"] == hotels.loc[row["hotel_id"], "chain_id"]
    assert row["chain_name"] == chains[row["chain_id"]]
    original = expected.set_index("image_id").loc[row["image_id"]]
    assert row["url"] == original["image_url"] and row["source"] == original["image_source"]
    assert row["timestamp"] == original["upload_timestamp"]
    assert row["image_name"] == f"{row['image_id']}.jpg"
    assert row["image_folder"] == (
        f"images/train/{row['chain_id']}/{row['hotel_id']}/{row['source']}"
    )


def test_filters(meta: Path):
    cam, _ = _sample(
        meta,
        "data.image_sources=[traffickcam]",
        "data.min_images=3",
        "data.max_images=8",
        "data.n_hotels=4",
    )
    assert set(cam["source"]) == {"traffickcam"}
    assert cam.groupby("hotel_id").size().between(3, 8).all()

    by_id, _ = _sample(meta, "data.chains=[2]", "data.n_hotels=3")
    assert set(by_id["chain_id"]) == {2}
    by_name, _ = _sample(meta, "data.chains=['Synthetic Chain 002']", "data.n_hotels=3")
    pd.testing.assert_frame_equal(by_id, by_name)

    wanted = sorted(by_id["hotel_id"].unique())
    exact, _ = _sample(meta, f"data.hotel_ids=[{','.join(map(str, wanted))}]", "data.n_hotels=3")
    assert sorted(exact["hotel_id"].unique()) == wanted

    with pytest.raises(StageError, match=r"image_sources.*'nowhere'"):
        _sample(meta, "data.image_sources=[nowhere]")
    with pytest.raises(StageError, match="no chain named"):
        _sample(meta, "data.chains=['No Such Chain']")
    with pytest.raises(StageError, match=r"hotel_ids: \[999999999\]"):
        _sample(meta, "data.hotel_ids=[999999999]")
    with pytest.raises(StageError, match=r"only .* hotels .* after the filters"):
        _sample(meta, "data.chains=[2]", "data.n_hotels=500")


def test_missing_file_or_column_is_a_clear_error(meta: Path, tmp_path: Path):
    with pytest.raises(StageError, match="not a directory"):
        _sample(tmp_path / "nowhere")
    bad = _copy(meta, tmp_path / "nocol")
    train = pd.read_csv(bad / "train_set.csv").drop(columns=["image_url"])
    train.to_csv(bad / "train_set.csv", index=False)
    with pytest.raises(StageError, match=r"train_set.csv lacks column\(s\) image_url"):
        _sample(bad)
    (bad / "chain_info.csv").unlink()
    with pytest.raises(StageError, match=r"not found: .*chain_info.csv"):
        _sample(bad)


def test_wrong_types_and_repeated_hotels_are_errors(meta: Path, tmp_path: Path):
    bad = _copy(meta, tmp_path / "types")
    train = pd.read_csv(bad / "train_set.csv").astype({"hotel_id": str})
    train.loc[5, "hotel_id"] = "twelve"
    train.to_csv(bad / "train_set.csv", index=False)
    with pytest.raises(StageError, match=r"train_set.csv: a column has values of the wrong type"):
        _sample(bad)
    bad = _copy(meta, tmp_path / "hotels")
    hotels = pd.read_csv(bad / "hotel_info.csv")
    pd.concat([hotels, hotels.iloc[[3]]]).to_csv(bad / "hotel_info.csv", index=False)
    with pytest.raises(StageError, match=r"hotel_info.csv repeats hotel_id"):
        _sample(bad)


def test_unknown_hotels_are_dropped_and_counted(meta: Path, tmp_path: Path):
    bad = _copy(meta, tmp_path / "orphans")
    clean, _ = _sample(meta)
    train = pd.read_csv(bad / "train_set.csv")
    orphans = train.iloc[:40].assign(hotel_id=123456789, image_id=range(1, 41))
    pd.concat([train, orphans]).to_csv(bad / "train_set.csv", index=False)
    every = f"data.n_hotels={train['hotel_id'].nunique()}"  # all hotels having images
    sample, stats = _sample(bad, "data.min_images=1", "data.max_images=1000", every)
    assert 123456789 not in set(sample["hotel_id"])
    assert stats.as_dict()["dropped_unknown_hotel"] == 40
    again, _ = _sample(bad)
    pd.testing.assert_frame_equal(again, clean)


def test_duplicate_image_ids(meta: Path, tmp_path: Path):
    clean, _ = _sample(meta)
    exact = _copy(meta, tmp_path / "exact")
    train = pd.read_csv(exact / "train_set.csv")
    pd.concat([train, train.iloc[100:110]]).to_csv(exact / "train_set.csv", index=False)
    sample, stats = _sample(exact)
    pd.testing.assert_frame_equal(sample, clean)  # exact repeats dropped, so no skew
    assert stats.as_dict()["dropped_duplicate_rows"] == 10

    conflict = _copy(meta, tmp_path / "conflict")
    twin = train.iloc[[7]].assign(hotel_id=train["hotel_id"].iloc[8])
    pd.concat([train, twin]).to_csv(conflict / "train_set.csv", index=False)
    with pytest.raises(StageError, match=rf"image_id values .* e.g. \[{train['image_id'][7]}\]"):
        _sample(conflict)


def test_bundled_sample_is_unchanged(tmp_path: Path):
    """The default path must keep writing the very sample.csv recorded in dvc.lock."""
    paths = StagePaths(sample=tmp_path / "s.csv", sample_metrics=tmp_path / "m.json")
    run_sample(compose(), paths)
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    outs = {o["path"]: o["md5"] for o in lock["stages"]["sample"]["outs"]}
    assert hashlib.md5(paths.sample.read_bytes()).hexdigest() == outs["data/interim/sample.csv"]


def test_split_test_set(meta: Path):
    sample, _ = _sample(
        meta, "data.split=test", "data.min_images=1", "data.max_images=5", "data.n_hotels=3"
    )
    test = pd.read_csv(meta / "test_set.csv")
    assert set(sample["image_id"]) <= set(test["image_id"])
    assert sample["image_folder"].str.startswith("images/test/").all()


def test_caption_column_is_optional_and_checked(tmp_path: Path):
    generate(tmp_path / "c", rows=4_000, hotels=80, chains=3, seed=2, captions=True)
    meta = tmp_path / "c" / "dataset"
    sample, _ = _sample(
        meta,
        "data.caption_column=description",
        "data.min_images=20",
        "data.max_images=90",
        "data.n_hotels=2",
    )
    assert list(sample.columns) == [*SAMPLE_COLUMNS, "description"]
    assert sample["description"].str.startswith("there is a ").all()
    plain, _ = _sample(meta, "data.min_images=20", "data.max_images=90", "data.n_hotels=2")
    assert list(plain.columns) == SAMPLE_COLUMNS
    pd.testing.assert_frame_equal(plain, sample[SAMPLE_COLUMNS])
    with pytest.raises(StageError, match=r"set data\.caption_column=null"):
        _sample(meta, "data.caption_column=notes")
