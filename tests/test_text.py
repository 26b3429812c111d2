import os
import subprocess
import sys
from pathlib import Path

import pytest

from alien_hotels import text
from alien_hotels.text import CaptionPreprocessor, RoomTypeClassifier
from conftest import ROOT, compose, subprocess_env

CAPTION = (
    "there is a bathroom with a sink, mirror, and shower, photo taken in 2018, brightly lit room, "
    "midjourney style, by Judith Brown"
)


def test_study_recipe_without_lemmatizer_keeps_first_words_and_drops_commas():
    prep = CaptionPreprocessor(compose().text.updated(lemmatizer="none", lowercase=False))
    assert prep(CAPTION) == "there is a bathroom with a sink mirror and shower photo taken in 2018"
    assert len(prep(CAPTION).split()) == 14


def test_max_words_and_lowercase():
    prep = CaptionPreprocessor(compose().text.updated(lemmatizer="none", max_words=3))
    assert prep("Two  Beds, one LAMP and a chair") == "two beds one"


def test_simplemma_lemmatizes_english():
    prep = CaptionPreprocessor(compose().text.updated(lemmatizer="simplemma", max_words=20))
    assert prep("rooms with beds and towels") == "room with bed and towel"


def test_pymorphy3_lemmatizes_russian():
    params = compose("text=ru_pymorphy3")
    prep = CaptionPreprocessor(params.text)
    assert prep("Комнаты с кроватями, лампами.") == "комната с кровать лампа"


def write_tiny_wordnet(root: Path) -> Path:
    """A few lemmas in WordNet's own file format, enough for nltk's reader and morphy."""
    wordnet = root / "corpora" / "wordnet"
    wordnet.mkdir(parents=True)
    nouns = {"room": 1, "bed": 2, "mouse": 3, "lamp": 4}
    files = {
        "lexnames": "00\tadj.all\t3\n01\tadv.all\t4\n02\tnoun.artifact\t1\n",
        "index.noun": "".join(f"{w} n 1 0 1 0 {o:08d}  \n" for w, o in nouns.items()),
        "data.noun": "".join(f"{o:08d} 02 n 01 {w} 0 000 | a {w}  \n" for w, o in nouns.items()),
        "noun.exc": "mice mouse\n",
        "index.verb": "sleep v 1 0 1 0 00000005  \n",
        "data.verb": "00000005 02 v 01 sleep 0 000 00 | to sleep  \n",
        "verb.exc": "slept sleep\n",
    }
    for pos in ("adj", "adv"):
        files.update({f"index.{pos}": "", f"data.{pos}": "", f"{pos}.exc": ""})
    files.update({"index.sense": "", "cntlist.rev": ""})
    for name, content in files.items():
        (wordnet / name).write_text(content, encoding="utf-8")
    return root


def test_study_wordnet_recipe_lemmatizes_with_wordnet_data(tmp_path: Path):
    """The study's recipe (text=study_wordnet) on real nltk WordNet files: plural nouns by
    morphy's rules, irregular forms from the exception lists, unknown words unchanged. A fresh
    interpreter, since nltk caches the corpus it first loads."""
    data = write_tiny_wordnet(tmp_path / "nltk_data")
    code = (
        "from alien_hotels.text import CaptionPreprocessor\n"
        "from conftest import compose\n"
        "prep = CaptionPreprocessor(compose('text=study_wordnet').text)\n"
        "print(prep('rooms with beds mice lamps'))\n"
    )
    env = subprocess_env(NLTK_DATA=str(data))
    env["PYTHONPATH"] += os.pathsep + str(ROOT / "tests")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "room with bed mouse lamp"


def test_wordnet_lemmatizer_without_data_says_how_to_get_it(tmp_path: Path):
    code = (
        "from alien_hotels.text import CaptionPreprocessor\n"
        "from conftest import compose\n"
        "CaptionPreprocessor(compose('text=study_wordnet').text)\n"
    )
    env = subprocess_env(NLTK_DATA=str(tmp_path))  # an empty data folder
    env["PYTHONPATH"] += os.pathsep + str(ROOT / "tests")
    env["HOME"] = str(tmp_path)  # nltk also looks in ~/nltk_data
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "text.lemmatizer=wordnet needs NLTK's WordNet data" in result.stderr


def test_stopwords_removed_after_truncation():
    cfg = compose().text.updated(
        lemmatizer="none", max_words=5, stopwords="english", extra_stopwords=["Arafed"]
    )
    prep = CaptionPreprocessor(cfg)
    # the first five words are "arafed there is a bedroom": only "bedroom" survives
    assert prep("arafed there is a bedroom with a bed") == "bedroom"


def test_each_distinct_word_is_lemmatized_once(monkeypatch):
    calls = []

    def counting(name, language):
        def lemmatize(word):
            calls.append(word)
            return word.upper()

        return lemmatize

    monkeypatch.setattr(text, "make_lemmatizer", counting)
    prep = CaptionPreprocessor(compose().text.updated(lemmatizer="simplemma"))
    out = prep.transform(["a bed and a bed", "a bed"])
    assert out == ["A BED AND A BED", "A BED"]
    assert sorted(calls) == ["a", "and", "bed"]


@pytest.mark.parametrize(
    ("caption", "room_type"),
    [
        (CAPTION, "bathroom"),
        ("there is a bed with a white sheet and two lamps, hotel", "bedroom"),
        ("arafed bedroom with a bed, chair, and lamp in it", "bedroom"),
        ("a living room with a couch and a table, bedroom door", "living area"),
        ("there is a large swimming pool with lounge chairs", "pool"),
        ("a hotel lobby with a front desk and chairs", "lobby"),
        ("the front desk of a hotel with a clock", "lobby"),
        ("a large building with a sign on the front of it", "exterior"),
        ("a restaurant with tables and chairs", "dining"),
        ("a painting of a horse, bathroom", "other"),  # keyword only outside the first clause
    ],
)
def test_room_type_rules(caption, room_type):
    classify = RoomTypeClassifier(compose().room_types)
    assert classify(caption) == room_type


def test_room_type_scope_caption_reads_whole_caption():
    cfg = compose("room_types.scope=caption").room_types
    assert RoomTypeClassifier(cfg)("a painting of a horse, bathroom") == "bathroom"
