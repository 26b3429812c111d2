"""Stage 3, `preprocess`: captions -> short lemmatized texts, plus a room type per caption.

The study removed commas, split on spaces, kept the first 14 words and lemmatized each word.
Caption vocabularies are small (a few thousand distinct words even at Hotels-50K scale), so each
distinct word is lemmatized once and looked up afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Literal

from pydantic import Field, field_validator, model_validator

from alien_hotels.common import Section, StageError

LEMMATIZERS = ("simplemma", "pymorphy3", "wordnet", "none")


class TextConfig(Section):
    """`text.*`: truncation, lemmatization and stopwords."""

    max_words: int = Field(ge=1)
    lemmatizer: Literal["simplemma", "pymorphy3", "wordnet", "none"]
    language: str = Field(min_length=2, max_length=3)
    lowercase: bool
    # Characters deleted before splitting on spaces; the study deleted commas only.
    punctuation: str
    stopwords: Literal["none", "english"]
    extra_stopwords: list[str]


class ImageRoomTypesConfig(Section):
    """`room_types.image.*`: CLIP zero-shot room types from the photos (`alien_hotels.roomtypes`).

    One prompt per room type (the keys of `room_types.rules`): `template` with `{room_type}`
    replaced by the type's phrase (`phrases`, else its name). The CLIP model is the caption
    stage's (`caption.clip_model_name` / `caption.clip_model_path`, device and dtype)."""

    template: str
    phrases: dict[str, str]
    # Below this softmax probability of the best prompt the label is `room_types.default`.
    other_below: float = Field(ge=0, le=1)
    batch_size: int = Field(ge=1)
    loader_workers: int = Field(ge=0)
    # Images are decoded no larger than this (CLIP looks at a few hundred pixels).
    max_image_side: int = Field(ge=64)
    progress: bool

    @field_validator("template")
    @classmethod
    def _has_placeholder(cls, template: str) -> str:
        try:
            prompts = {template.format(room_type=name) for name in ("bedroom", "bathroom")}
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(
                f"room_types.image.template: only {{room_type}} may be a placeholder ({exc})"
            ) from None
        if len(prompts) == 1:  # no placeholder, or only an escaped `{{room_type}}`
            raise ValueError(
                f"room_types.image.template needs a {{room_type}} placeholder; {template!r} "
                "gives every room type the same prompt"
            )
        return template


class RoomTypesConfig(Section):
    """`room_types.*`: where each image's room type comes from, and the caption keyword rules.

    `source`: `captions` (the keyword rules below, on the caption), `image` (CLIP zero-shot on
    the photo), `folder` (the dataset's room-type folder names, `room_type_folder` of the
    sample), or `auto`: folder if at least `auto_folder_share` of the images has one, else
    image if the images are usable and the caption stage runs CLIP anyway
    (`caption.method=clip_interrogator`), else captions.

    Caption rules: the earliest keyword in the caption's first clause (the BLIP sentence, before
    the flavor phrases) decides; a tie at the same position goes to the longer keyword, then to
    the rule listed first. Keywords match whole words, with an optional plural `s`.
    """

    source: Literal["auto", "captions", "image", "folder"]
    # `auto` picks folder names only when at least this share of the images has one.
    auto_folder_share: float = Field(ge=0, le=1)
    default: str
    scope: Literal["first_clause", "caption"]
    rules: dict[str, list[str]]
    image: ImageRoomTypesConfig

    @field_validator("rules")
    @classmethod
    def _non_empty_keywords(cls, rules: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, keywords in rules.items():
            if not keywords or any(not str(k).strip() for k in keywords):
                raise ValueError(f"room_types.rules.{name} needs a list of non-empty keywords")
        if not rules:
            raise ValueError("room_types.rules needs at least one room type")
        return rules

    @model_validator(mode="after")
    def _phrases_name_rules(self) -> RoomTypesConfig:
        unknown = sorted(set(self.image.phrases) - set(self.rules))
        if unknown:
            raise ValueError(
                f"room_types.image.phrases: {', '.join(unknown)} is not a room type of "
                f"room_types.rules ({', '.join(self.rules)})"
            )
        if self.default in self.rules:
            raise ValueError(
                f"room_types.default={self.default!r} is also a rule name: the label for "
                "'no rule matched' must differ from every room type"
            )
        return self

    def prompts(self) -> dict[str, str]:
        """Room type -> its zero-shot prompt, in rule order."""
        return {
            name: self.image.template.format(room_type=self.image.phrases.get(name, name))
            for name in self.rules
        }


def make_lemmatizer(name: str, language: str = "en") -> Callable[[str], str]:
    """Return a word -> lemma function; fail early with a clear message if data is missing."""
    if name == "none":
        return lambda word: word
    if name == "simplemma":
        import simplemma

        return lambda word: simplemma.lemmatize(word, lang=language)
    if name == "pymorphy3":
        import pymorphy3

        analyzer = pymorphy3.MorphAnalyzer(lang=language)
        return lambda word: analyzer.parse(word)[0].normal_form
    if name == "wordnet":
        from nltk.stem import WordNetLemmatizer

        lemmatizer = WordNetLemmatizer()
        try:
            lemmatizer.lemmatize("rooms")
        except LookupError:
            raise StageError(
                "text.lemmatizer=wordnet needs NLTK's WordNet data, which is not installed: "
                "run `python -m nltk.downloader wordnet omw-1.4` on a machine with internet, "
                "or choose text.lemmatizer=simplemma"
            ) from None
        return lemmatizer.lemmatize
    raise StageError(f"text.lemmatizer={name!r} is unknown; allowed: {', '.join(LEMMATIZERS)}")


def stopword_set(cfg: TextConfig) -> frozenset[str]:
    words: set[str] = {w.lower() for w in cfg.extra_stopwords}
    if cfg.stopwords == "english":
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        words |= set(ENGLISH_STOP_WORDS)
    return frozenset(words)


class CaptionPreprocessor:
    """Caption -> first `max_words` words, lemmatized, stopwords removed (after truncation)."""

    def __init__(self, cfg: TextConfig) -> None:
        self.cfg = cfg
        self._lemmatize = make_lemmatizer(cfg.lemmatizer, cfg.language)
        self._stopwords = stopword_set(cfg)
        self._strip = str.maketrans("", "", cfg.punctuation) if cfg.punctuation else None
        self._lemmas: dict[str, str] = {}

    @property
    def distinct_words(self) -> int:
        """Distinct words lemmatized so far (the vocabulary before stopword removal)."""
        return len(self._lemmas)

    def lemma(self, word: str) -> str:
        lemma = self._lemmas.get(word)
        if lemma is None:
            lemma = self._lemmas[word] = self._lemmatize(word)
        return lemma

    def __call__(self, caption: str) -> str:
        if self.cfg.lowercase:
            caption = caption.lower()
        if self._strip is not None:
            caption = caption.translate(self._strip)
        # The study split on single spaces; empty strings from double spaces are not words.
        words = [w for w in caption.split(" ") if w][: self.cfg.max_words]
        lemmas = (self.lemma(w) for w in words)
        return " ".join(w for w in lemmas if w not in self._stopwords)

    def transform(self, captions: Iterable[str]) -> list[str]:
        return [self(c) for c in captions]


class RoomTypeClassifier:
    """Assign a room type to a caption from `RoomTypesConfig` keyword rules."""

    def __init__(self, cfg: RoomTypesConfig) -> None:
        self.cfg = cfg
        # One alternation per rule; longest keywords first so "front desk" beats "desk".
        self._patterns = []
        for order, (name, keywords) in enumerate(cfg.rules.items()):
            alternatives = sorted({k.strip().lower() for k in keywords}, key=len, reverse=True)
            body = "|".join(re.escape(k).replace(r"\ ", r"\s+") for k in alternatives)
            self._patterns.append((order, name, re.compile(rf"\b(?:{body})(?:e?s)?\b")))

    def __call__(self, caption: str) -> str:
        text = caption.lower()
        if self.cfg.scope == "first_clause":
            text = text.split(",", 1)[0]
        best: tuple[int, int, int] | None = None
        best_name = self.cfg.default
        for order, name, pattern in self._patterns:
            match = pattern.search(text)
            if match is None:
                continue
            key = (match.start(), -len(match.group(0)), order)
            if best is None or key < best:
                best, best_name = key, name
        return best_name
