import pytest

from alien_hotels import text
from alien_hotels.common import StageError
from alien_hotels.text import CaptionPreprocessor, RoomTypeClassifier
from conftest import compose

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


def test_wordnet_lemmatizer_needs_wordnet_data():
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        with pytest.raises(StageError, match=r"text.lemmatizer=wordnet needs NLTK's WordNet"):
            CaptionPreprocessor(compose().text.updated(lemmatizer="wordnet"))
    else:  # data installed on this machine: it must then work like the study's recipe
        prep = CaptionPreprocessor(compose().text.updated(lemmatizer="wordnet", lowercase=False))
        assert prep("rooms with beds") == "room with bed"


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
