from pathlib import Path

import pytest
import yaml

from alien_hotels.config import ConfigError, Params, load_params, validate_params
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
