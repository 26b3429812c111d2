"""`text.lemmatizer=wordnet` reads only what morphy needs, and gives NLTK's lemmas.

The reference is NLTK's own `WordNetLemmatizer().lemmatize`, run against a `WordNetCorpusReader`
rooted at the same WordNet folder. Real WordNet data comes from NLTK's data path, or is built
from Debian's `wordnet-base` (`benchmarks.study_recipe.ensure_wordnet`); without either the
comparisons are skipped (the tiny-WordNet tests in test_text.py still run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from alien_hotels import text
from alien_hotels.text import MORPHOLOGICAL_SUBSTITUTIONS, WordNetFiles, WordNetMorphy
from conftest import ROOT, subprocess_env

POS = ("n", "v", "a", "r", "s")


@pytest.fixture(scope="module")
def wordnet_folder(tmp_path_factory) -> Path:
    """A real WordNet 3.0 folder that NLTK reads."""
    try:
        found = text.find_wordnet()
    except LookupError:
        found = None
    if found is not None and found.member_prefix is None:
        return found.location
    from benchmarks.study_recipe import SYSTEM_WORDNET, ensure_wordnet

    if not (SYSTEM_WORDNET / "index.noun").is_file():
        pytest.skip("no WordNet data (nltk_data, or Debian's wordnet-base) on this machine")
    cache = tmp_path_factory.mktemp("nltk_data")
    if not ensure_wordnet(cache):
        pytest.skip("NLTK cannot read the WordNet data built from wordnet-base")
    return cache / "corpora" / "wordnet"


@pytest.fixture(scope="module")
def nltk_lemmatize(wordnet_folder):
    """NLTK's `WordNetLemmatizer().lemmatize`, over a full corpus reader of `wordnet_folder`."""
    import nltk.corpus
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.stem import WordNetLemmatizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        reader = WordNetCorpusReader(str(wordnet_folder), None)
    saved = nltk.corpus.wordnet
    nltk.corpus.wordnet = reader  # what `WordNetLemmatizer._morphy` imports
    try:
        yield WordNetLemmatizer().lemmatize
    finally:
        nltk.corpus.wordnet = saved


def tokens(captions) -> set[str]:
    """Every word of `captions` as the preprocess stage may see it (commas deleted, or split
    on), as written and lowercased."""
    words: set[str] = set()
    for caption in captions:
        caption = str(caption)
        for variant in (caption.replace(",", ""), caption.replace(",", " ")):
            words.update(variant.split())
    return words | {w.lower() for w in words}


def assert_same_lemmas(words: set[str], ours: WordNetMorphy, nltk_lemmatize, pos=POS) -> None:
    assert len(words) > 100
    for tag in pos:
        differ = {
            w: (ours.lemmatize(w, tag), nltk_lemmatize(w, tag))
            for w in sorted(words)
            if ours.lemmatize(w, tag) != nltk_lemmatize(w, tag)
        }
        assert not differ, (tag, dict(list(differ.items())[:20]))


def test_substitution_rules_are_nltks():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    nltk_rules = WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS
    assert {pos: list(rules) for pos, rules in MORPHOLOGICAL_SUBSTITUTIONS.items()} == nltk_rules


def test_lemmas_match_nltk_on_the_bundled_sample(wordnet_folder, nltk_lemmatize):
    captions = pd.read_csv(ROOT / "data/bundled/hotels_sample.csv")["description"].dropna()
    ours = WordNetMorphy(WordNetFiles(wordnet_folder))
    words = tokens(captions)
    # plus forms that exercise each rule, the exception lists and the shortest-lemma choice
    words |= {"rooms", "mice", "churches", "aardwolves", "abaci", "us", "slept", "lying"}
    words |= {"better", "best", "goes", "women", "hardrock", "Rooms", "bathrooms", "axes"}
    assert_same_lemmas(words, ours, nltk_lemmatize)


def test_lemmas_match_nltk_on_the_100k_benchmark_captions(wordnet_folder, nltk_lemmatize):
    """Every token of the 100k synthetic captions of benchmarks/bench_text_scale.py (seed 0);
    about 3 s, most of it generating the captions."""
    from alien_hotels.datagen.captions import (
        BUNDLED_SAMPLE,
        CaptionVocabulary,
        synthetic_captions,
    )

    vocabulary = CaptionVocabulary.from_csv(ROOT / BUNDLED_SAMPLE)
    captions = synthetic_captions(100_000, seed=0, vocabulary=vocabulary)["description"]
    ours = WordNetMorphy(WordNetFiles(wordnet_folder))
    assert_same_lemmas(tokens(captions), ours, nltk_lemmatize)


def test_zipped_wordnet_reads_the_same(wordnet_folder, tmp_path):
    """NLTK's downloader may leave `corpora/wordnet.zip`: read inside it, same lemmas."""
    archive = tmp_path / "corpora" / "wordnet.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("index.noun", "noun.exc", "index.verb", "verb.exc"):
            zf.write(wordnet_folder / name, f"wordnet/{name}")
    zipped = WordNetMorphy(WordNetFiles(archive, "wordnet/"))
    plain = WordNetMorphy(WordNetFiles(wordnet_folder))
    for word in ("rooms", "mice", "beds", "slept", "towels", "Judith"):
        for pos in ("n", "v"):
            assert zipped.lemmatize(word, pos) == plain.lemmatize(word, pos)


def test_find_wordnet_follows_nltk_data_order(tmp_path, monkeypatch):
    """A folder before a zip, the first data path before later ones; as NLTK's loader."""
    first, second = tmp_path / "first", tmp_path / "second"
    (second / "corpora" / "wordnet").mkdir(parents=True)
    (second / "corpora" / "wordnet" / "index.noun").write_text("", encoding="utf-8")
    (first / "corpora").mkdir(parents=True)
    with zipfile.ZipFile(first / "corpora" / "wordnet.zip", "w") as zf:
        zf.writestr("wordnet/index.noun", "")
    monkeypatch.setenv("NLTK_DATA", os.pathsep.join([str(first), str(second)]))
    found = text.find_wordnet()
    assert found.location == second / "corpora" / "wordnet" and found.member_prefix is None
    shutil.rmtree(second / "corpora" / "wordnet")
    found = text.find_wordnet()
    assert found.location == first / "corpora" / "wordnet.zip"
    assert found.member_prefix == "wordnet/"


def test_preprocess_with_wordnet_does_not_import_nltk(wordnet_folder):
    """The whole point: no NLTK corpus reader (nor NLTK, ~1 s of imports) in the stage."""
    code = (
        "import sys\n"
        "from alien_hotels.text import CaptionPreprocessor\n"
        "from conftest import compose\n"
        "prep = CaptionPreprocessor(compose('text=study_wordnet').text)\n"
        "print(prep('there is a bathroom with mice, towels and lamps'))\n"
        "print('nltk' in sys.modules)\n"
    )
    env = subprocess_env(NLTK_DATA=str(wordnet_folder.parent.parent))
    env["PYTHONPATH"] += os.pathsep + str(ROOT / "tests")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == [
        "there is a bathroom with mouse towel and lamp",
        "False",
    ]
