"""Stage 3, `preprocess`: captions -> short lemmatized texts, plus a room type per caption.

The study removed commas, split on spaces, kept the first 14 words and lemmatized each word.
Caption vocabularies are small (a few thousand distinct words even at Hotels-50K scale), so each
distinct word is lemmatized once and looked up afterwards.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
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
        try:
            lemmatizer = WordNetMorphy(find_wordnet())
            lemmatizer.lemmatize("rooms")
        except (LookupError, OSError, KeyError):  # none found; or a folder without index.noun
            raise StageError(
                "text.lemmatizer=wordnet needs NLTK's WordNet data, which is not installed: "
                "run `python -m nltk.downloader wordnet omw-1.4` on a machine with internet, "
                "or choose text.lemmatizer=simplemma"
            ) from None
        return lemmatizer.lemmatize
    raise StageError(f"text.lemmatizer={name!r} is unknown; allowed: {', '.join(LEMMATIZERS)}")


# WordNet lemmas as NLTK's `WordNetLemmatizer().lemmatize(word, pos="n")` gives them, without
# NLTK's corpus reader: that reader loads all of WordNet (every index, the satellite adjectives,
# the sense index and the OMW mapping; ~6-10 s per process), while morphy needs only the lemma
# names of `index.<pos>` and the exception list `<pos>.exc` of the one part of speech asked for
# (~0.1 s for nouns). The rules below are NLTK 3.10's `WordNetCorpusReader._morphy` (pinned in
# pyproject.toml); tests/test_wordnet.py checks every token of the bundled sample and of the
# 100k benchmark captions against NLTK itself.

WORDNET_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv", "s": "adj"}
MORPHOLOGICAL_SUBSTITUTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "n": (
        *(("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z")),
        *(("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y")),
    ),
    "v": (
        *(("s", ""), ("ies", "y"), ("es", "e"), ("es", "")),
        *(("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    ),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}
MORPHOLOGICAL_SUBSTITUTIONS["s"] = MORPHOLOGICAL_SUBSTITUTIONS["a"]


class WordNetFiles:
    """The WordNet folder NLTK would load (`corpora/wordnet`, or `wordnet/` in
    `corpora/wordnet.zip`); `read(name)` gives one of its files as text (UTF-8, as NLTK reads)."""

    def __init__(self, location: Path, member_prefix: str | None = None) -> None:
        self.location = location  # the folder, or the zip file
        self.member_prefix = member_prefix  # inside a zip: "wordnet/"; None for a folder

    def __repr__(self) -> str:
        inner = f"!{self.member_prefix}" if self.member_prefix else ""
        return f"WordNetFiles({self.location}{inner})"

    def read(self, name: str) -> str:
        if self.member_prefix is None:
            return (self.location / name).read_text(encoding="utf-8")
        import zipfile

        with zipfile.ZipFile(self.location) as archive:
            return archive.read(self.member_prefix + name).decode("utf-8")


def nltk_data_path() -> list[Path]:
    """NLTK's default `nltk.data.path` (nltk/data.py, POSIX), computed without importing NLTK
    (whose import pulls in scipy and scikit-learn: ~1 s): `NLTK_DATA`'s entries, ~/nltk_data,
    then the interpreter's prefix and the system folders."""
    paths = [os.path.expanduser(d) for d in os.environ.get("NLTK_DATA", "").split(os.pathsep) if d]
    if "APPENGINE_RUNTIME" not in os.environ and os.path.expanduser("~/") != "~/":
        paths.append(os.path.expanduser("~/nltk_data"))
    paths += [os.path.join(sys.prefix, *sub, "nltk_data") for sub in ((), ("share",), ("lib",))]
    paths += ["/usr/share/nltk_data", "/usr/local/share/nltk_data"]
    paths += ["/usr/lib/nltk_data", "/usr/local/lib/nltk_data"]
    return [Path(p) for p in paths]


def find_wordnet() -> WordNetFiles:
    """Where NLTK's `wordnet` corpus loader would read WordNet (`nltk.corpus.util.LazyCorpusLoader`
    with `nltk.data.find`): a `corpora/wordnet` folder in the first data path that has one, else
    `wordnet/` inside the first `corpora/wordnet.zip`. Anything else (a data path that is itself
    a zip file, a `nltk.data.path` changed at run time, Windows) is left to NLTK's own `find`,
    imported only then. LookupError if there is no WordNet."""
    paths = nltk_data_path()
    for root in paths:
        folder = root / "corpora" / "wordnet"
        if (folder / "index.noun").is_file():
            return WordNetFiles(folder)
    for root in paths:
        archive = root / "corpora" / "wordnet.zip"
        if archive.is_file():
            return WordNetFiles(archive, "wordnet/")
    import nltk.data

    try:
        pointer = nltk.data.find("corpora/wordnet")
    except LookupError:
        pointer = nltk.data.find("corpora/wordnet.zip/wordnet/")
    if hasattr(pointer, "zipfile"):  # a ZipFilePathPointer
        return WordNetFiles(Path(pointer.zipfile.filename), pointer.entry)
    return WordNetFiles(Path(pointer.path))


class WordNetMorphy:
    """NLTK's `WordNetLemmatizer.lemmatize` reading only what morphy needs.

    Per part of speech (loaded on first use): the lemma names of `index.<pos>` (lines that start
    with a space are the licence) and the exceptions of `<pos>.exc` (inflected form -> base
    forms; a later line for the same form wins, as in NLTK's dict). `morphy_all` is NLTK's
    `_morphy`: the exception's base forms if the word is an exception, else the word with each
    substitution rule applied once; the word itself first; kept if WordNet has the lemma for
    that part of speech, in order, without repeats. `lemmatize` returns the shortest of those
    (the first of equal length), or the word unchanged when there is none.
    """

    def __init__(self, files: WordNetFiles) -> None:
        self.files = files
        self._lemmas: dict[str, frozenset[str]] = {}
        self._exceptions: dict[str, dict[str, list[str]]] = {}

    def lemma_names(self, pos: str) -> frozenset[str]:
        """Lemmas that WordNet has for `pos` (n, v, a, r; s, satellite adjectives, share a's)."""
        tag = "a" if pos == "s" else pos
        names = self._lemmas.get(tag)
        if names is None:
            text = self.files.read(f"index.{WORDNET_FILES[tag]}")
            names = frozenset(
                fields[0]
                for line in text.splitlines()
                if line and not line.startswith(" ")
                for fields in (line.split(None, 2),)
                if len(fields) > 1 and fields[1] == tag
            )
            self._lemmas[tag] = names
        return names

    def exceptions(self, pos: str) -> dict[str, list[str]]:
        tag = "a" if pos == "s" else pos
        table = self._exceptions.get(tag)
        if table is None:
            table = {}
            for line in self.files.read(f"{WORDNET_FILES[tag]}.exc").splitlines():
                terms = line.split()
                if terms:
                    table[terms[0]] = terms[1:]
            self._exceptions[tag] = table
        return table

    def morphy_all(self, form: str, pos: str = "n") -> list[str]:
        """NLTK's `WordNetCorpusReader._morphy(form, pos)`."""
        exceptions = self.exceptions(pos)
        if form in exceptions:
            forms = exceptions[form]
        else:
            forms = [
                form[: -len(old)] + new
                for old, new in MORPHOLOGICAL_SUBSTITUTIONS[pos]
                if form.endswith(old)
            ]
        names = self.lemma_names(pos)
        found: list[str] = []
        for candidate in [form, *forms]:
            if candidate in names and candidate not in found:
                found.append(candidate)
        return found

    def lemmatize(self, word: str, pos: str = "n") -> str:
        """NLTK's `WordNetLemmatizer().lemmatize(word, pos)`."""
        lemmas = self.morphy_all(word, pos)
        return min(lemmas, key=len) if lemmas else word


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
        self._kept: dict[str, str | None] = {}

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
        words = caption.split(" ")
        if "" in words:
            words = [w for w in words if w]
        # word -> its lemma, or None for a lemma that is a stopword (one look-up per word)
        kept = self._kept
        out = []
        for word in words[: self.cfg.max_words]:
            lemma = kept.get(word, _UNSEEN)
            if lemma is _UNSEEN:
                lemma = self.lemma(word)
                lemma = kept[word] = None if lemma in self._stopwords else lemma
            if lemma is not None:
                out.append(lemma)
        return " ".join(out)

    def transform(self, captions: Iterable[str]) -> list[str]:
        return [self(c) for c in captions]


_UNSEEN = object()


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
        self._cache: dict[str, str] = {}

    # Room types of the texts seen so far: BLIP's first clauses repeat (about a third of them
    # are distinct in the benchmark's captions); bounded, so a million distinct texts do not
    # keep a million entries.
    CACHE_SIZE = 200_000

    def __call__(self, caption: str) -> str:
        text = caption.lower()
        if self.cfg.scope == "first_clause":
            text = text.split(",", 1)[0]
        name = self._cache.get(text)
        if name is None:
            name = self._classify(text)
            if len(self._cache) < self.CACHE_SIZE:
                self._cache[text] = name
        return name

    def _classify(self, text: str) -> str:
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
