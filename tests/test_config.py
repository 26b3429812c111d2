import re
import shutil
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel

from alien_hotels.config import ConfigError, Params, compose_params, load_params, validate_params
from conftest import ROOT, compose, run


def test_committed_params_yaml_is_the_composed_default():
    """params.yaml is what `dvc exp run` would compose from conf/: they must not drift apart."""
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert validate_params(committed) == compose()


def test_defaults_match_the_study():
    params = compose()
    assert params.text.max_words == 14
    assert params.text.lemmatizer == "simplemma"
    assert params.features.n_components == 50
    assert (params.cluster.k_min, params.cluster.k_max, params.cluster.k) == (1, 29, None)
    assert params.cluster.random_state == 42
    assert params.map.perplexity == 30


def test_group_and_key_overrides_compose():
    params = compose("text=ru_pymorphy3", "text.max_words=20", "cluster.k=10")
    assert params.text.lemmatizer == "pymorphy3"
    assert params.text.language == "ru"
    assert params.text.max_words == 20
    assert params.cluster.k == 10


def _raw(**section_updates):
    raw = compose().model_dump()
    for dotted, value in section_updates.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    return raw


def test_unknown_key_names_key_and_allowed_keys():
    raw = _raw(text__max_wrds=20)
    with pytest.raises(ConfigError) as err:
        validate_params(raw)
    message = str(err.value)
    assert "text.max_wrds: unknown key" in message
    assert "max_words" in message and "lemmatizer" in message


def test_unknown_nested_key_lists_nested_allowed_keys():
    raw = compose().model_dump()
    raw["features"]["tfidf"]["min_dff"] = 2
    with pytest.raises(ConfigError, match=r"features\.tfidf\.min_dff: unknown key.*min_df"):
        validate_params(raw)


def test_unknown_lemmatizer_lists_allowed_values():
    with pytest.raises(ConfigError) as err:
        validate_params(_raw(text__lemmatizer="porter"))
    message = str(err.value)
    assert "text.lemmatizer = 'porter'" in message
    for allowed in ("simplemma", "pymorphy3", "wordnet", "none"):
        assert allowed in message


@pytest.mark.parametrize(
    ("update", "fragment"),
    [
        ({"text__max_words": 0}, "text.max_words = 0"),
        ({"text__max_words": "many"}, "text.max_words = 'many'"),
        ({"features__n_components": -1}, "features.n_components = -1"),
        ({"cluster__k_min": 5, "cluster__k_max": 3}, "cluster.k_min (5) must not exceed"),
        ({"map__perplexity": 0}, "map.perplexity = 0"),
        ({"data__min_images": 70}, "data.min_images (70) must not exceed data.max_images"),
        # numpy / scikit-learn take seeds in 0..2**32-1 (more in tests/test_hostile_params.py)
        ({"data__seed": -1}, "data.seed = -1: Input should be greater than or equal to 0"),
        ({"cluster__random_state": 2**64}, "cluster.random_state = 18446744073709551616: Input"),
    ],
)
def test_out_of_range_and_wrong_types_name_the_key(update, fragment):
    with pytest.raises(ConfigError) as err:
        validate_params(_raw(**update))
    assert fragment in str(err.value)


def test_unknown_section_is_rejected():
    raw = compose().model_dump()
    raw["clustr"] = {"k": 3}
    with pytest.raises(ConfigError, match="clustr: unknown key"):
        validate_params(raw)


def test_load_params_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_cli_check_reports_bad_params_and_exits_nonzero(tmp_path: Path):
    raw = _raw(cluster__k_max="lots")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = run(["alien-hotels", "check"], tmp_path, check=False)
    assert result.returncode == 2
    assert "cluster.k_max = 'lots'" in result.stderr


def test_cli_compose_prints_valid_params(tmp_path: Path):
    result = run(["alien-hotels", "compose", "text.max_words=20"], ROOT)
    params = Params.model_validate(yaml.safe_load(result.stdout))
    assert params.text.max_words == 20
    bad = run(["alien-hotels", "compose", "text=klingon"], ROOT, check=False)
    assert bad.returncode == 2
    assert "klingon" in bad.stderr


# --- one source of defaults: conf/ -------------------------------------------------------------

# Fields that may be absent from conf/: None means "this knob does not apply" (only
# instruct_pix2pix recipes have an image guidance scale), not a second default value.
ABSENT_MEANS_NOT_APPLICABLE = {("RecipeConfig", "image_guidance_scale")}


def _section_models(model: type[BaseModel], seen: set | None = None):
    seen = set() if seen is None else seen
    if model in seen:
        return
    seen.add(model)
    yield model
    for field in model.model_fields.values():
        for candidate in (field.annotation, *get_args(field.annotation)):
            for inner in (candidate, *get_args(candidate)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    yield from _section_models(inner, seen)


def test_section_models_hold_no_default_values():
    """Defaults live in conf/ only; a model default would be a second, silently drifting copy."""
    models = list(_section_models(Params))
    assert len(models) >= 13  # every section and its nested models were walked
    with_defaults = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if not field.is_required() and (model.__name__, name) not in ABSENT_MEANS_NOT_APPLICABLE
    ]
    assert with_defaults == []


def test_a_missing_key_is_an_error_naming_it():
    raw = compose().model_dump()
    del raw["cluster"]["k_max"]
    with pytest.raises(ConfigError, match=r"cluster\.k_max: Field required"):
        validate_params(raw)


def test_committed_params_yaml_is_exactly_the_composition():
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert committed == compose_params([], ROOT / "conf")


@pytest.mark.parametrize(
    "override",
    [
        "+data.name=bundled",
        "+images.verify_tls=true",
        "+edit.recipes.neon.description=neon",
        "+edit.recipes.neon.image_guidance_scale=1.5",
    ],
)
def test_removed_keys_are_rejected(override):
    with pytest.raises(ConfigError):
        compose(override)


RECIPES = ROOT / "conf/edit/recipes"


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _deep_merge(base[key], value) if nested else value
    return out


def _differs_from(base: dict, top: dict) -> list[str]:
    """Keys of `top` that repeat `base`'s value (a recipe should hold only what differs)."""
    repeated = []
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            repeated += [f"{key}.{k}" for k in _differs_from(base[key], value)]
        elif key in base and base[key] == value:
            repeated.append(key)
    return repeated


def test_recipes_inherit_the_base_recipe_and_hold_only_what_differs():
    base = yaml.safe_load((RECIPES / "base.yaml").read_text())
    composed = compose_params([], ROOT / "conf")["edit"]["recipes"]
    listed = yaml.safe_load((ROOT / "conf/edit/default.yaml").read_text())["defaults"]
    files = sorted(p.stem for p in RECIPES.glob("*.yaml") if p.stem != "base")
    # The defaults list runs every recipe file, and base is no recipe of its own.
    assert sorted(composed) == files and "base" not in composed
    assert len([entry for entry in listed if "recipes@" in str(entry)]) == len(files)
    for name in files:
        own = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
        assert own.pop("defaults") == ["base", "_self_"], name
        assert _differs_from(base, own) == [], name
        assert composed[name] == _deep_merge(base, own), name


def test_recipe_without_a_prompt_names_the_key(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "edit/recipes/bare.yaml").write_text("defaults:\n  - base\n  - _self_\n")
    with pytest.raises(ConfigError, match=r"edit\.recipes\.bare\.prompt: no value"):
        compose_params(["+edit/recipes@edit.recipes.bare=bare"], conf)


# --- docs tables against conf/ -----------------------------------------------------------------

# (doc, section prefix, Hydra overrides): tables with a "default" column, checked row by row.
DOCUMENTED_DEFAULTS = [
    ("README.md", None, []),  # the group column names the section
    ("docs/captioning.md", "caption", []),
    ("docs/hotels50k.md", "", ["data=hotels50k"]),
    ("docs/folder.md", "", ["data=folder"]),
]
# Rows whose default is described in words rather than listed value by value.
PROSE_ROWS = {
    ("README.md", "`rules`, `scope`, `default`"),
    ("README.md", "`tfidf.*`"),
    ("README.md", "`elbow.*`"),
}
CELL_ITEM = re.compile(r"`[^`]*`|[^,\s][^,]*")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _doc_value(item: str) -> str:
    item = item.strip().strip("`")
    return item[1:-1] if len(item) >= 2 and item[0] == item[-1] == '"' else item


def _conf_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return "[]" if value == [] else str(value)


def _documented_defaults(doc: str, prefix: str | None):
    """(key cell, dotted key, documented value) for each default table row of `doc`."""
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        header = _cells(line) if line.startswith("|") else []
        if not any(cell.startswith("default") for cell in header) or "key" not in header:
            continue
        key_col = header.index("key")
        default_col = next(j for j, cell in enumerate(header) if cell.startswith("default"))
        section = prefix
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            cells = _cells(row)
            if prefix is None and cells[0]:
                section = re.match(r"`([^`]+)`", cells[0]).group(1)
            keys = re.findall(r"`([^`]+)`", cells[key_col])
            values = [_doc_value(item) for item in CELL_ITEM.findall(cells[default_col])]
            if (doc, cells[key_col]) in PROSE_ROWS:
                continue
            assert len(values) in (1, len(keys)), f"{doc}: cannot read row {row!r}"
            spread = values * len(keys) if len(values) == 1 else values
            for key, value in zip(keys, spread, strict=True):
                yield ".".join(filter(None, [section, key])), value


@pytest.mark.parametrize(("doc", "prefix", "overrides"), DOCUMENTED_DEFAULTS)
def test_documented_defaults_equal_the_composed_config(doc, prefix, overrides):
    composed = compose_params(overrides, ROOT / "conf")
    checked = 0
    for dotted, documented in _documented_defaults(doc, prefix):
        value = composed
        for part in dotted.split("."):
            assert part in value, f"{doc} documents {dotted}, which conf/ does not have"
            value = value[part]
        assert _conf_value(value) == documented, f"{doc}: {dotted}"
        checked += 1
    assert checked >= 8  # the tables were found and read
