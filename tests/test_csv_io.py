"""`common.write_csv` (pyarrow's writer) holds the same cells as pandas' `to_csv`: only the
quoting differs (arrow quotes every text cell), so every reader gets the same table back."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alien_hotels.common import read_csv, write_csv

HOSTILE = ['Inn, "The"', "two\nlines", "=1+1", "", "NA", "café ☕", "crlf\r\n", " padded "]


def mixed_frame() -> pd.DataFrame:
    n = len(HOSTILE)
    return pd.DataFrame(
        {
            "image_id": np.arange(n) * 1_000_003,
            "hotel_name": pd.Series(HOSTILE, dtype=str),
            "caption": pd.Series([*HOSTILE[1:], None], dtype=object),
            "whole": np.arange(n, dtype=np.float64) * 100.0,  # must not read back as integers
            "score": [0.1, 1e-5, 1e20, np.nan, -0.0, 2.5, 1 / 3, np.inf],
            "x": np.linspace(-1, 1, n, dtype=np.float32),
            "count": pd.array([1, None, 3, 4, 5, 6, 7, 8], dtype="Int64"),
            "flag": [True, False] * (n // 2),
            "mixed": pd.Series([1, "a", None, 2.5, "b", 3, "c", "d"], dtype=object),
        }
    )


def cells(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


@pytest.mark.parametrize("columns", [None, ["caption"], ["score"], ["count"], ["hotel_name"]])
def test_the_cells_are_pandas_own(tmp_path: Path, columns):
    """Cell for cell what `to_csv` writes (one-column tables too, whose missing values must not
    become blank lines that readers skip)."""
    frame = mixed_frame() if columns is None else mixed_frame()[columns]
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    write_csv(frame, ours)
    frame.to_csv(theirs, index=False)
    assert cells(ours) == cells(theirs)
    assert len(pd.read_csv(ours)) == len(frame)


def test_a_round_trip_reads_the_same_table(tmp_path: Path):
    frame = mixed_frame()
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    write_csv(frame, ours)
    frame.to_csv(theirs, index=False)
    back = read_csv(ours, list(frame.columns), what="table")
    pd.testing.assert_frame_equal(back, read_csv(theirs, list(frame.columns), what="table"))
    assert back["whole"].dtype == np.float64 and back["flag"].dtype == bool
    assert back["hotel_name"].tolist()[4] == "NA"  # a name, not a missing value


def test_an_empty_table_is_its_header(tmp_path: Path):
    target = tmp_path / "empty.csv"
    write_csv(pd.DataFrame({"a": [], "b": pd.Series([], dtype=str)}), target)
    assert target.read_text() == '"a","b"\n'
    assert read_csv(target, ["a", "b"], what="table").empty


def test_a_lone_carriage_return_stays_in_its_cell(tmp_path: Path):
    """pandas' `to_csv` leaves a cell with a lone `\\r` unquoted, and readers split its row in
    two (a caption or folder name from data may have one); arrow quotes it."""
    frame = pd.DataFrame({"hotel_name": ["cr\rinside", "next"], "hotel_id": [1, 2]})
    target = tmp_path / "cr.csv"
    write_csv(frame, target)
    assert cells(target)[1:] == [["cr\rinside", "1"], ["next", "2"]]
    back = read_csv(target, ["hotel_name", "hotel_id"], what="table")
    assert back["hotel_name"].tolist() == ["cr\rinside", "next"]


READ_CASES = {
    "numbers as names": "hotel_name,hotel_id\n101,1\n007,2\n1e3,3\n",
    "booleans as text": "caption,text,hotel_id\nTrue,FALSE,1\nfalse,true,2\n",
    "missing words": (
        "hotel_name,room_type,hotel_id,chain_id\nNA,None,1,NA\n,null,2,\nnan,N/A,3,4\n"
    ),
    "mixed": 'hotel_name,caption,score\nInn,"a, b",0.5\n42,"say ""hi""",NA\n"",x,1\n',
    "all missing": "hotel_name,caption,hotel_id\n,,1\n,,2\n",
}


@pytest.mark.parametrize("name", sorted(READ_CASES))
def test_text_columns_read_as_written(tmp_path: Path, name: str):
    """`read_csv` infers text columns (fast) and re-reads those that inference turned into
    numbers or booleans: the same table as reading every text column with `dtype=str`."""
    from alien_hotels.common import PANDAS_NA_VALUES, TEXT_COLUMNS

    path = tmp_path / "case.csv"
    path.write_text(READ_CASES[name], encoding="utf-8")
    header = pd.read_csv(path, nrows=0).columns
    expected = pd.read_csv(
        path,
        keep_default_na=False,
        na_values={col: [""] if col in TEXT_COLUMNS else PANDAS_NA_VALUES for col in header},
        dtype={col: "str" for col in TEXT_COLUMNS if col in header},
    )
    pd.testing.assert_frame_equal(read_csv(path, [], what="case"), expected)
    some = [header[0]]
    pd.testing.assert_frame_equal(read_csv(path, some, what="case", usecols=[]), expected[some])
