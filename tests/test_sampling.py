import pandas as pd
import pytest

from alien_hotels.common import StageError
from alien_hotels.datasets import read_dataset
from alien_hotels.sampling import sample_hotels
from conftest import ROOT, compose

BUNDLED = str(ROOT / "data/bundled/hotels_sample.csv")


def test_bundled_sample_keeps_every_captioned_row():
    cfg = compose().data.updated(path=BUNDLED)
    sample, stats = sample_hotels(read_dataset(cfg), cfg)
    assert stats.hotels_eligible == 10 and stats.hotels_sampled == 10
    assert stats.rows_sampled == 413
    assert stats.dropped_no_image == 100
    assert stats.dropped_no_caption == 0
    assert stats.rows_kept == len(sample) == 313
    assert sample["description"].notna().all()
    assert sample["image_id"].is_unique


def test_sampling_is_seeded_and_respects_bounds():
    cfg = compose().data.updated(path=BUNDLED, n_hotels=3, min_images=35, max_images=60, seed=7)
    df = read_dataset(cfg)
    first, _ = sample_hotels(df, cfg)
    again, _ = sample_hotels(df, cfg)
    pd.testing.assert_frame_equal(first, again)
    assert first["hotel_id"].nunique() == 3
    counts = df.rows.groupby("hotel_id").size()
    assert counts[first["hotel_id"].unique()].between(35, 60).all()
    other, _ = sample_hotels(df, cfg.model_copy(update={"seed": 8}))
    assert set(other["hotel_id"]) != set(first["hotel_id"])


def test_too_few_eligible_hotels_is_a_clear_error():
    cfg = compose().data.updated(path=BUNDLED, n_hotels=11)
    with pytest.raises(StageError, match=r"data.n_hotels=11 but only 10 hotels"):
        sample_hotels(read_dataset(cfg), cfg)


def test_rows_without_caption_are_dropped_and_counted(tmp_path):
    df = pd.read_csv(BUNDLED)
    captioned = df.index[df["downloaded"]][:5]
    df.loc[captioned, "description"] = "  "
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    cfg = compose().data.updated(path=str(path))
    sample, stats = sample_hotels(read_dataset(cfg), cfg)
    assert stats.dropped_no_caption == 5
    assert len(sample) == 308


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("image_id,hotel_id,description\n", "has no rows"),
        ("image_id,hotel_id,url\n1,2,http://x\n", r"lacks column\(s\) description"),
        ("image_id,hotel_id,description\n1,2,a\n1,3,b\n", "repeats image_id"),
    ],
)
def test_bad_dataset_files(tmp_path, content, message):
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(StageError, match=message):
        read_dataset(compose().data.updated(path=str(path)))


def test_missing_dataset_file(tmp_path):
    with pytest.raises(StageError, match="not found"):
        read_dataset(compose().data.updated(path=str(tmp_path / "nope.csv")))


def test_n_hotels_null_takes_every_eligible_hotel():
    cfg = compose().data.updated(path=BUNDLED, n_hotels=None, min_images=40, max_images=60)
    data = read_dataset(cfg)
    sample, stats = sample_hotels(data, cfg)
    counts = data.rows.groupby("hotel_id").size()
    assert set(sample["hotel_id"]) == set(counts[counts.between(40, 60)].index)
    assert stats.hotels_sampled == stats.hotels_eligible == len(set(sample["hotel_id"])) < 10
    with pytest.raises(StageError, match="no hotel has between data.min_images=61"):
        none = cfg.updated(min_images=61, max_images=70)
        sample_hotels(read_dataset(none), none)
