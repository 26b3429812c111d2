"""The one typed config loader.

`params.yaml` (composed by Hydra from `conf/`, see `compose_params`) is validated against
`Params` before a stage does any work. Each pipeline module owns the config model of its own
section; this module only assembles them and turns validation errors into messages that name the
key, the bad value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from alien_hotels.captioning import CaptionConfig
from alien_hotels.clustering import ClusterConfig
from alien_hotels.common import Section
from alien_hotels.distributed import RayConfig
from alien_hotels.editing.config import EditConfig
from alien_hotels.features import FeaturesConfig
from alien_hotels.images import ImagesConfig
from alien_hotels.mapping import MapConfig
from alien_hotels.sampling import DataConfig
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
    features: FeaturesConfig
    cluster: ClusterConfig
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
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: run from the project root, or compose it with "
            "`alien-hotels compose > params.yaml`"
        )
    with path.open(encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return validate_params(raw, source=str(path))


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
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides or []))
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:  # a `???` in conf/ that nothing filled in
        raise ConfigError(f"{exc.full_key}: no value; conf/ marks it mandatory (???)") from None


def _describe(err: dict[str, Any]) -> str:
    loc = [str(part) for part in err["loc"] if not str(part).startswith("function-")]
    key = ".".join(loc) or "<root>"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1])
        return f"{key}: unknown key; allowed keys here: {', '.join(allowed)}"
    value = err.get("input")
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
