"""Synthetic Hotels-50K metadata with the published files' shape and size.

Writes `<out>/dataset/{chain_info,hotel_info,train_set,test_set}.csv` with the real headers.
The defaults match the real dataset's scale: 1,124,215 training rows over 50,000 hotels in 92
chains. Images per hotel are skewed as in the real data (log-normal weights: many hotels with a
handful of photos, a long tail with hundreds, some with none), chains are Zipf-sized, and most
photos come from travel websites with a minority from TraffickCam. Everything is drawn from one
seed, so the same arguments give byte-identical files.

`base_url` points every image URL at a server of your own (`<base_url>/<source>/<image_id>.jpg`),
which is how the tests and the end-to-end check fetch images from a loopback server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TRAIN_ROWS = 1_124_215
HOTELS = 50_000
CHAINS = 92
TEST_ROWS = 17_954
SOURCES = np.array(["travel_website", "traffickcam"])
# Caption-like text for `captions=True`: a BLIP-style sentence, then CLIP flavour phrases.
ROOMS = {
    "bathroom": ["sink", "toilet", "mirror", "shower", "bathtub", "towel"],
    "bedroom": ["bed", "lamp", "pillow", "nightstand", "window", "headboard"],
    "restaurant": ["table", "chair", "plate", "buffet", "counter", "glass"],
    "lobby": ["sofa", "chandelier", "reception desk", "plant", "rug", "staircase"],
    "pool": ["lounge chair", "umbrella", "palm tree", "water", "deck", "towel"],
}
FLAVOURS = np.array(
    [
        "real estate photography",
        "motel",
        "hdr photograph",
        "brightly lit room",
        "2019",
        "wide angle",
        "listing image",
        "warm lighting",
        "by Judith Brown",
        "award winning",
    ]
)


@dataclass(frozen=True)
class GeneratedMetadata:
    root: Path
    train_rows: int
    test_rows: int
    hotels: int
    chains: int

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"


def generate(
    out: str | Path,
    rows: int = TRAIN_ROWS,
    hotels: int = HOTELS,
    chains: int = CHAINS,
    test_rows: int | None = None,
    seed: int = 0,
    base_url: str | None = None,
    traffickcam_share: float = 0.1,
    skew: float = 1.1,
    captions: bool = False,
) -> GeneratedMetadata:
    """Write the four metadata CSVs under `<out>/dataset/`; return what was written.

    `captions=True` adds a `description` column of caption-like text (not in the published
    files) so the text half can run on this data with `caption=precomputed`.
    """
    if rows < 1 or hotels < 1 or chains < 1:
        raise ValueError("rows, hotels and chains must be positive")
    if test_rows is None:
        test_rows = max(1, round(rows * TEST_ROWS / TRAIN_ROWS))
    rng = np.random.default_rng(seed)
    dataset = Path(out) / "dataset"
    dataset.mkdir(parents=True, exist_ok=True)

    chain_ids = np.arange(1, chains + 1)
    chain_table = pd.DataFrame(
        {"chain_id": chain_ids, "chain_name": [f"Synthetic Chain {c:03d}" for c in chain_ids]}
    )
    hotel_ids = np.sort(rng.choice(np.arange(1, hotels * 4 + 1), size=hotels, replace=False))
    chain_weight = 1.0 / np.arange(1, chains + 1) ** 1.1
    hotel_chain = rng.choice(chain_ids, size=hotels, p=chain_weight / chain_weight.sum())
    hotel_table = pd.DataFrame(
        {
            "hotel_id": hotel_ids,
            "hotel_name": [f"Synthetic Hotel {h}" for h in hotel_ids],
            "chain_id": hotel_chain,
            "latitude": np.round(rng.uniform(-60, 70, hotels), 5),
            "longitude": np.round(rng.uniform(-180, 180, hotels), 5),
        }
    )
    # Skewed images per hotel: multinomial counts with log-normal weights.
    weights = rng.lognormal(mean=0.0, sigma=skew, size=hotels)
    train_counts = rng.multinomial(rows, weights / weights.sum())
    test_counts = rng.multinomial(test_rows, weights / weights.sum())
    ids = rng.permutation(np.arange(1, rows + test_rows + 1, dtype=np.int64)) + 1_000_000
    train = _image_table(rng, hotel_ids, train_counts, ids[:rows], traffickcam_share, base_url)
    test = _image_table(rng, hotel_ids, test_counts, ids[rows:], 1.0, base_url)
    if captions:
        train["description"] = _captions(rng, len(train))
        test["description"] = _captions(rng, len(test))

    chain_table.to_csv(dataset / "chain_info.csv", index=False)
    hotel_table.to_csv(dataset / "hotel_info.csv", index=False)
    train.to_csv(dataset / "train_set.csv", index=False)
    test.to_csv(dataset / "test_set.csv", index=False)
    return GeneratedMetadata(Path(out), rows, test_rows, hotels, chains)


def _image_table(
    rng: np.random.Generator,
    hotel_ids: np.ndarray,
    counts: np.ndarray,
    image_ids: np.ndarray,
    traffickcam_share: float,
    base_url: str | None,
) -> pd.DataFrame:
    n = int(counts.sum())
    hotel = np.repeat(hotel_ids, counts)
    order = rng.permutation(n)  # the published files are not grouped by hotel
    hotel = hotel[order]
    source = SOURCES[(rng.random(n) < traffickcam_share).astype(np.int8)]
    seconds = rng.integers(1_420_070_400, 1_546_300_800, size=n)  # 2015-2018
    stamps = pd.to_datetime(seconds, unit="s")
    timestamp = stamps.strftime("%Y-%m-%d %H:%M:%S")
    ids = pd.Series(image_ids).astype(str)
    src = pd.Series(source)
    if base_url:
        url = base_url.rstrip("/") + "/" + src + "/" + ids + ".jpg"
    else:
        token = pd.Series(rng.integers(0, 16**8, size=n)).map("{:08x}".format)
        hotels = pd.Series(hotel).astype(str)
        travel = "https://i.travelapi.com/hotels/" + hotels + "/" + token + "_b.jpg"
        cam = (
            "https://traffickcam.com/images/"
            + pd.Series(stamps.strftime("%Y/%m/%Y%m%d_%H%M%S_"))
            + token.str.upper()
            + ".jpg"
        )
        url = travel.where(src == "travel_website", cam)
    return pd.DataFrame(
        {
            "image_id": image_ids,
            "hotel_id": hotel,
            "image_url": url.to_numpy(),
            "image_source": source,
            "upload_timestamp": np.asarray(timestamp),
        }
    )


def _captions(rng: np.random.Generator, n: int) -> np.ndarray:
    rooms = np.array(list(ROOMS))
    room = rng.integers(0, len(rooms), size=n)
    objects = np.array([ROOMS[r] for r in rooms])  # rooms x 6
    pick = rng.integers(0, objects.shape[1], size=(n, 2))
    flavour = rng.integers(0, len(FLAVOURS), size=(n, 2))
    text = (
        "there is a "
        + pd.Series(rooms[room])
        + " with a "
        + pd.Series(objects[room, pick[:, 0]])
        + " and a "
        + pd.Series(objects[room, pick[:, 1]])
        + ", "
        + pd.Series(FLAVOURS[flavour[:, 0]])
        + ", "
        + pd.Series(FLAVOURS[flavour[:, 1]])
    )
    return text.to_numpy()
