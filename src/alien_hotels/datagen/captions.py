"""Synthetic CLIP Interrogator captions shaped like the bundled ones, at any size.

A CLIP Interrogator caption (mode `best`) is a BLIP sentence followed by comma-separated
"flavor" phrases picked by CLIP. The generator learns both parts from a captioned sample table
(by default the bundled one):

* the first clause is a walk of a second-order Markov chain over the sample's first clauses, so
  sentences recombine the sample's own BLIP phrasing ("there is a bathroom with a sink and ...");
* the flavor phrases are drawn from the sample's phrase pool, weighted by how often each occurs,
  with each hotel favouring a few "signature" phrases (photos of one hotel share a style, which
  is what makes hotel identity a competing explanation of the clusters);
* the number of phrases per caption follows the sample's distribution.

Rows carry every column of the study's sample table, so the output can stand in for
`data.path` or be split into the `sample` and `caption` stage outputs (`pipeline_inputs`).
Everything is seeded: the same `(n, seed, source)` gives the same table.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from alien_hotels.captioning import CAPTION_COLUMNS
from alien_hotels.common import StageError
from alien_hotels.tables import SAMPLE_COLUMNS

BUNDLED_SAMPLE = Path("data/bundled/hotels_sample.csv")
IMAGES_PER_HOTEL = 22  # Hotels-50K: about 1.1M training images of 50k hotels
SIGNATURE_PHRASES = 12  # phrases a hotel favours
SIGNATURE_SHARE = 0.4  # chance that a flavor slot takes one of its hotel's signature phrases
_START, _END = "\x02", "\x03"


@dataclass(frozen=True)
class CaptionVocabulary:
    """What the generator learned from a captioned sample."""

    chain: dict[tuple[str, str], tuple[list[str], list[float]]]  # state -> (words, cum. probs)
    phrases: list[str]
    phrase_weights: np.ndarray  # probabilities over `phrases`
    n_phrases: np.ndarray  # phrase counts per caption observed in the sample
    source_rows: int

    @classmethod
    def from_captions(cls, captions: pd.Series | list[str]) -> CaptionVocabulary:
        captions = [str(c) for c in captions if isinstance(c, str) and c.strip()]
        if not captions:
            raise StageError("datagen: the source sample has no captions to learn from")
        transitions: dict[tuple[str, str], Counter] = defaultdict(Counter)
        phrase_counts: Counter = Counter()
        n_phrases = []
        for caption in captions:
            parts = [p.strip() for p in caption.split(",")]
            words = parts[0].split()
            state = (_START, _START)
            for word in [*words, _END]:
                transitions[state][word] += 1
                state = (state[1], word)
            flavors = [p for p in parts[1:] if p]
            phrase_counts.update(flavors)
            n_phrases.append(len(flavors))
        chain = {}
        for state, counter in transitions.items():
            words = sorted(counter)
            counts = np.array([counter[w] for w in words], dtype=float)
            chain[state] = (words, list(np.cumsum(counts) / counts.sum()))
        phrases = sorted(phrase_counts)
        weights = np.array([phrase_counts[p] for p in phrases], dtype=float)
        return cls(
            chain=chain,
            phrases=phrases,
            phrase_weights=weights / weights.sum(),
            n_phrases=np.array(n_phrases, dtype=int),
            source_rows=len(captions),
        )

    @classmethod
    def from_csv(cls, path: str | Path = BUNDLED_SAMPLE, column: str = "description"):
        path = Path(path)
        if not path.is_file():
            raise StageError(f"datagen: source sample not found: {path}")
        df = pd.read_csv(path, usecols=lambda c: c == column)
        if column not in df.columns:
            raise StageError(f"datagen: {path} has no caption column {column!r}")
        return cls.from_captions(df[column])

    def first_clause(self, uniforms: np.ndarray, max_words: int = 30) -> str:
        """One BLIP-like sentence; `uniforms` supplies the random numbers (one per word)."""
        words: list[str] = []
        state = (_START, _START)
        for u in uniforms[:max_words]:
            choices, cum = self.chain[state]
            word = choices[min(bisect.bisect_right(cum, u), len(choices) - 1)]
            if word == _END:
                break
            words.append(word)
            state = (state[1], word)
        return " ".join(words)


def synthetic_captions(
    n: int,
    seed: int = 0,
    vocabulary: CaptionVocabulary | None = None,
    n_hotels: int | None = None,
) -> pd.DataFrame:
    """`n` rows shaped like the study's sample table, captions in `description`.

    `n_hotels` defaults to Hotels-50K's ratio of about 22 images per hotel (at least 1).
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    vocab = vocabulary or CaptionVocabulary.from_csv()
    n_hotels = n_hotels or max(1, round(n / IMAGES_PER_HOTEL))
    rng = np.random.default_rng(seed)

    hotel_index = np.sort(rng.integers(0, n_hotels, size=n))
    hotel_ids = 100_000 + hotel_index
    signatures = rng.choice(
        len(vocab.phrases), size=(n_hotels, SIGNATURE_PHRASES), p=vocab.phrase_weights
    )
    counts = rng.choice(vocab.n_phrases, size=n)
    slots = int(counts.sum())
    global_draw = rng.choice(len(vocab.phrases), size=slots, p=vocab.phrase_weights)
    slot_hotel = np.repeat(hotel_index, counts)
    signature_draw = signatures[slot_hotel, rng.integers(0, SIGNATURE_PHRASES, size=slots)]
    phrase_index = np.where(rng.random(slots) < SIGNATURE_SHARE, signature_draw, global_draw)
    uniforms = rng.random((n, 30))

    phrases = vocab.phrases
    captions = []
    offset = 0
    for row in range(n):
        m = int(counts[row])
        flavor = [phrases[i] for i in phrase_index[offset : offset + m]]
        offset += m
        captions.append(", ".join([vocab.first_clause(uniforms[row]), *flavor]))

    image_ids = 10_000_000 + np.arange(n)
    chain_ids = hotel_index % 90
    return pd.DataFrame(
        {
            "image_id": image_ids,
            "hotel_id": hotel_ids,
            "url": [f"https://example.invalid/images/{i}.jpg" for i in image_ids],
            "source": np.where(rng.random(n) < 0.5, "traffickcam", "travel_website"),
            "timestamp": "2019-01-01 00:00:00",
            "hotel_name": [f"Synthetic Hotel {h}" for h in hotel_ids],
            "chain_id": chain_ids,
            "latitude": np.round(rng.uniform(-60, 70, n_hotels)[hotel_index], 5),
            "longitude": np.round(rng.uniform(-180, 180, n_hotels)[hotel_index], 5),
            "chain_name": [f"Chain {c}" for c in chain_ids],
            "downloaded": True,
            "image_name": [f"{i}.jpg" for i in image_ids],
            "image_folder": [f"synthetic/train/{h}" for h in hotel_ids],
            "description": captions,
        },
        columns=[*SAMPLE_COLUMNS, "description"],
    )


def pipeline_inputs(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a synthetic table into the `sample` and `caption` stage outputs (their contracts)."""
    sample = table[SAMPLE_COLUMNS]
    captions = pd.DataFrame(
        {
            "image_id": table["image_id"],
            "caption": table["description"],
            "caption_mode": "best",
            "caption_model": "synthetic",
            "clip_model": "synthetic",
        },
        columns=CAPTION_COLUMNS,
    )
    return sample, captions
