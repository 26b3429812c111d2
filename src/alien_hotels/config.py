"""The one typed config loader.

`params.yaml` (composed by Hydra from `conf/`, see `compose_params`) is validated against
`Params` before a stage does any work. Each pipeline module owns the config model of its own
section; this module only assembles them and turns validation errors into messages that name the
key, the bad value and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from alien_hotels.captioning.config import CaptionConfig
from alien_hotels.cards import CardsConfig
from alien_hotels.clustering import ClusterConfig
from alien_hotels.common import Section
from alien_hotels.datasets.config import DataConfig
from alien_hotels.distributed.config import RayConfig
from alien_hotels.duplicates import DuplicatesConfig
from alien_hotels.editing.config import EditConfig, check_recipe_name
from alien_hotels.features import FeaturesConfig
from alien_hotels.images.config import ImagesConfig
from alien_hotels.mapping import MapConfig
from alien_hotels.text import RoomTypesConfig, TextConfig

DEFAULT_PARAMS = Path("params.yaml")
DEFAULT_CONF_DIR = Path("conf")


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type or out of range."""


class Params(Section):
    """Everything a stage may read from `params.yaml`."""

    data: DataConfig
    images: ImagesConfig
    caption: CaptionConfig
    text: TextConfig
    room_types: RoomTypesConfig
    duplicates: DuplicatesConfig
    features: FeaturesConfig
    cluster: ClusterConfig
    cards: CardsConfig
    map: MapConfig
    edit: EditConfig
    ray: RayConfig


def validate_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    """Validate a plain dict of params; raise `ConfigError` with one line per problem."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    return validate_params(read_params_file(path), source=str(path))


def read_params_file(path: Path) -> dict[str, Any] | None:
    """The plain YAML of a params file; a missing file, bad YAML (one line with file:line:col) or
    something other than a mapping is a `ConfigError`."""
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: run from the project root, or compose it with "
            "`alien-hotels compose > params.yaml`"
        )
    try:
        with path.open(encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except yaml.YAMLError as exc:  # bad syntax, or a tag safe_load refuses (`!!python/object`)
        raise ConfigError(_yaml_error(path, exc)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def compose_params(
    overrides: list[str] | None = None, conf_dir: str | Path = DEFAULT_CONF_DIR
) -> dict[str, Any]:
    """Compose `conf/config.yaml` with Hydra overrides, as `dvc exp run -S` does."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    if not (Path(conf_dir) / "config.yaml").is_file():
        raise ConfigError(
            f"{Path(conf_dir) / 'config.yaml'} not found: run from the project root (conf/ holds "
            "every default), or pass a params file"
        )
    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides or []))
    except yaml.YAMLError as exc:  # a conf/ file that is no YAML, or has a refused tag
        raise ConfigError(_yaml_error(None, exc)) from None
    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:  # a `???` in conf/ that nothing filled in
        raise ConfigError(f"{exc.full_key}: no value; conf/ marks it mandatory (???)") from None
    # Recipe names become DVC stage names, folders and files: refuse a bad one here too, for
    # callers that compose without validating everything (`validate_params` checks it again).
    recipes = (raw.get("edit") or {}).get("recipes")
    for name in recipes if isinstance(recipes, dict) else ():
        try:
            check_recipe_name(str(name))
        except ValueError as exc:
            raise ConfigError(f"edit.recipes: key {name!r}: {exc}") from None
    return raw


def _yaml_error(path: Path | None, exc: yaml.YAMLError) -> str:
    """One line: file, line and column (1-based) and what the parser objected to."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    path = path if path is not None else getattr(mark, "name", None) or "conf/"
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    what = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, yaml.reader.ReaderError):  # a control character: no line, a position
        where = f"{path}: character {exc.position + 1}"
        char = exc.character
        what = f"{exc.reason} ({f'#x{char:04x}' if isinstance(char, int) else repr(char)})"
    return f"{where}: invalid YAML: {' '.join(str(what).split())}"


# Keys shown as they are; any other key (from a hostile file: spaces, quotes, control
# characters) is shown as a Python literal, so a message stays one readable line.
PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _describe(err: dict[str, Any]) -> str:
    loc = [part for part in err["loc"] if not str(part).startswith("function-")]
    if loc and loc[-1] == "[key]":  # a dict key failed its own type (e.g. a recipe name)
        loc = loc[:-2]
    key = ".".join(str(p) if PLAIN_KEY.fullmatch(str(p)) else repr(p) for p in loc) or "<root>"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1])
        return f"{key}: unknown key; allowed keys here: {', '.join(allowed)}"
    value = err.get("input")
    if err["loc"][-1:] == ("[key]",):
        return f"{key}: key {value!r}: {err['msg']}"
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"{key}{shown}: {err['msg']}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at `loc` inside `Params`."""
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        candidates = [field.annotation, *get_args(field.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested or get_origin(field.annotation) is dict:
            break
        model = nested[0]
    return sorted(model.model_fields)
