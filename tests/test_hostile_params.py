"""Hostile params (issue 23, rows 9 and 10): what a later stage or library would reject is
refused by the config's types first, naming key, value and what is allowed; a YAML error is one
line, no traceback; and no recipe name ever reaches a shell, even under `dvc exp run -S`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import get_args, get_origin

import pytest
import typer.main
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from alien_hotels.cli import app
from alien_hotels.config import ConfigError, Params, compose_params, validate_params
from conftest import ROOT, compose, run

SEED_MAX = 2**32 - 1  # numpy's RandomState and scikit-learn take 0..2**32-1

# --- seeds --------------------------------------------------------------------------------------


def _seed_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, FieldInfo) of every seed / random_state below `model`, recipes included."""
    found = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if name in ("seed", "random_state"):
            found.append((key, field))
        inner = f"{key}.<name>." if get_origin(field.annotation) is dict else f"{key}."
        for candidate in (field.annotation, *get_args(field.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found += _seed_fields(candidate, inner)
    return found


def test_every_seed_field_is_bounded_to_what_numpy_and_sklearn_take():
    fields = _seed_fields(Params)
    keys = {key for key, _ in fields}
    # the seeds the pipeline has today (a new one is checked too, by the loop below)
    assert {
        "data.seed",
        "cluster.random_state",
        "features.random_state",
        "map.random_state",
        "edit.recipes.<name>.seed",
        "edit.textual_inversion.seed",
        "edit.imagic.seed",
    } <= keys
    for key, field in fields:
        ge = [m.ge for m in field.metadata if hasattr(m, "ge")]
        le = [m.le for m in field.metadata if hasattr(m, "le")]
        assert (ge, le) == ([0], [SEED_MAX]), (key, field.metadata)


def _with(raw: dict, dotted: str, value) -> dict:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return raw


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("data.seed", -1, "greater than or equal to 0"),
        ("cluster.random_state", 2**64, f"less than or equal to {SEED_MAX}"),
        ("features.random_state", -1, "greater than or equal to 0"),
        ("map.random_state", 2**32, f"less than or equal to {SEED_MAX}"),
        ("edit.recipes.neon.seed", 2**32, f"less than or equal to {SEED_MAX}"),
        ("edit.textual_inversion.seed", 2**64, f"less than or equal to {SEED_MAX}"),
        ("edit.imagic.seed", 2**32, f"less than or equal to {SEED_MAX}"),
    ],
)
def test_seed_out_of_range_names_key_value_and_bound(key, value, allowed):
    raw = _with(compose().model_dump(), key, value)
    with pytest.raises(ConfigError) as err:
        validate_params(raw)
    assert f"{key} = {value}: Input should be {allowed}" in str(err.value)


@pytest.mark.parametrize("value", [0, SEED_MAX])
def test_seed_bounds_are_accepted(value):
    raw = compose().model_dump()
    for key in ("data.seed", "cluster.random_state", "edit.imagic.seed"):
        _with(raw, key, value)
    assert validate_params(raw).cluster.random_state == value


def _write(workdir: Path, raw: dict) -> Path:
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("command", "key", "value"),
    [("sample", "data.seed", -1), ("cluster", "cluster.random_state", 2**64)],
)
def test_stage_refuses_a_bad_seed_before_any_work(tmp_path, command, key, value):
    """Row 9: these passed validation, then numpy / scikit-learn raised a traceback."""
    raw = _with(compose().model_dump(), key, value)
    raw["data"]["path"] = str(ROOT / "data/bundled/hotels_sample.csv")
    _write(tmp_path, raw)
    result = run(["alien-hotels", command], tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert f"{key} = {value}: Input should be" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


# --- YAML errors --------------------------------------------------------------------------------

HOSTILE_YAML = {
    # safe_load refuses the tag (correctly): the refusal itself must be one line
    "python_tag": ('data: !!python/object/apply:os.system ["touch pwned"]\n', ":1:7: invalid YAML"),
    "unclosed": ("data:\n  seed: [1,\n", ":3:1: invalid YAML"),
    "control_char": ('data: "\x1b[31m"\n', ": character 8: invalid YAML"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_YAML))
def test_check_reports_a_yaml_error_as_one_line(tmp_path, case):
    text, where = HOSTILE_YAML[case]
    (tmp_path / "params.yaml").write_text(text)
    result = run(["alien-hotels", "check"], tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: params.yaml{where}")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_non_utf8_params_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_bytes(b"data: \xff\n")
    result = run(["alien-hotels", "check"], tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr == "error: params.yaml: not UTF-8 text (byte 6)\n"


def _params_commands() -> list[list[str]]:
    """Every CLI command that reads a params file (a `--params` option), as argv prefixes."""
    found = []

    def walk(command, prefix: list[str]) -> None:
        if hasattr(command, "commands"):  # a group (typer bundles its own click)
            for name, sub in command.commands.items():
                walk(sub, [*prefix, name])
        elif any(p.name == "params" for p in command.params):
            found.append(prefix)

    walk(typer.main.get_command(app), [])
    return found


def test_every_stage_command_reports_a_yaml_error_as_one_line(tmp_path, monkeypatch):
    commands = _params_commands()
    assert ["sample"] in commands and ["edit"] in commands and ["models", "download"] in commands
    path = tmp_path / "params.yaml"
    path.write_text(HOSTILE_YAML["python_tag"][0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # `caption` would re-exec this process otherwise
    for argv in commands:
        result = CliRunner().invoke(app, [*argv, "--params", str(path)])
        assert result.exit_code == 2, (argv, result.output, result.exception)
        assert f"{path}:1:7: invalid YAML" in result.output, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_compose_reports_a_bad_conf_file_as_one_line(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    with (conf / "data/bundled.yaml").open("a") as fh:
        fh.write('extra: !!python/object/apply:os.system ["touch pwned"]\n')
    result = run(["alien-hotels", "compose", "--conf-dir", str(conf)], tmp_path, check=False)
    assert result.returncode == 2
    assert "data/bundled.yaml:" in result.stderr and "invalid YAML" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "pwned").exists()


# --- recipe names -------------------------------------------------------------------------------

BAD_NAMES = ["x$(touch p)", "x'$(touch q)'", "x|touch r", "Neon", "neon-2", "a\nb", ""]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_recipe_name_outside_the_pattern_is_refused(name):
    raw = compose().model_dump()
    raw["edit"]["recipes"][name] = raw["edit"]["recipes"]["neon"]
    with pytest.raises(ConfigError) as err:
        validate_params(raw)
    message = str(err.value)
    assert f"edit.recipes: key {name!r}: " in message
    assert "^[a-z0-9_]+$" in message
    assert len(message.splitlines()) == 2  # the heading and one line: no raw newline from the key


# What `dvc exp run -S` can write: Hydra's dict keys take `$`, `|`, spaces and `\(`-escaped
# parentheses, and OmegaConf's oc.create builds keys with quotes from a YAML string.
HYDRA_KEY_OVERRIDES = {
    "x$(touch p)": r"++edit.recipes={x$\(touch p\):${edit.recipes.neon}}",
    "x|touch r": "++edit.recipes={x|touch r:${edit.recipes.neon}}",
    "x'$(touch q)'": (
        "edit.recipes=${oc.create:\"x'$(touch q)':\n  mask:\n    files_dir: data/masks/none\"}"
    ),
}


@pytest.mark.parametrize("name", sorted(HYDRA_KEY_OVERRIDES))
def test_compose_refuses_a_recipe_name_a_hydra_override_can_make(name):
    with pytest.raises(ConfigError, match=r"edit\.recipes: key .*\^\[a-z0-9_\]\+\$") as err:
        compose_params([HYDRA_KEY_OVERRIDES[name]], ROOT / "conf")
    assert repr(name) in str(err.value)


def test_cli_compose_refuses_a_bad_recipe_name(tmp_path):
    override = HYDRA_KEY_OVERRIDES["x$(touch p)"]
    result = run(["alien-hotels", "compose", override], ROOT, check=False)
    assert result.returncode == 2
    assert "edit.recipes: key 'x$(touch p)'" in result.stderr and not result.stdout


def test_dvc_yaml_puts_no_recipe_name_into_a_shell_command():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        assert "${" not in str(body["cmd"]), name


@pytest.mark.parametrize(
    ("stage", "recipe"),
    [("edit@neon", "neon"), ("sub/dvc.yaml:edit@no_towels", "no_towels")],
)
def test_edit_takes_its_recipe_from_dvc_stage(monkeypatch, stage, recipe):
    from alien_hotels.cli import recipe_from_dvc_stage

    monkeypatch.setenv("DVC_STAGE", stage)
    assert recipe_from_dvc_stage() == recipe


@pytest.mark.parametrize("stage", [None, "sample", "edit@x$(touch p)", "edit@neon\n", "edit@"])
def test_edit_refuses_a_dvc_stage_that_is_no_recipe(monkeypatch, stage):
    from alien_hotels.cli import recipe_from_dvc_stage

    if stage is None:
        monkeypatch.delenv("DVC_STAGE", raising=False)
    else:
        monkeypatch.setenv("DVC_STAGE", stage)
    with pytest.raises(ConfigError, match="--dvc-stage"):
        recipe_from_dvc_stage()


# --- real DVC: no shell sees a hostile recipe name ------------------------------------------------

PAYLOAD_FILES = ("p", "q", "r")


@pytest.fixture
def pipeline_up_to_date(project: Path) -> Path:
    """A repo copy whose edit stages' upstream (sample, images, textual_inversion) is done and
    committed, so `dvc exp run` goes straight to the edit@ stage, as after a finished run."""
    run(["dvc", "repro", "-q", "images", "textual_inversion"], project)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    run([*git, "add", "-A"], project)
    run([*git, "commit", "-qm", "upstream", "--allow-empty"], project)
    return project


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if ".git" not in p.parts}


def _files_outside_dvc_state(root: Path, new: set[str]) -> list[str]:
    """New files other than DVC's own state (DVC may create the empty parent folders of a
    stage's outputs before the command fails)."""
    return sorted(p for p in new if not p.startswith("repo/.dvc/") and not (root / p).is_dir())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HYDRA_KEY_OVERRIDES))
def test_dvc_exp_run_never_hands_a_shell_a_recipe_name(pipeline_up_to_date, tmp_path, name):
    """Row 10: DVC's foreach put `x$(touch p)` into `alien-hotels edit ${key}`; quoting `${key}`
    would not do (the oc.create key carries quotes). The payload must not run."""
    repo = pipeline_up_to_date
    before = _listing(tmp_path)
    override = HYDRA_KEY_OVERRIDES[name]
    result = run(["dvc", "exp", "run", "-S", override, f"edit@{name}"], repo, check=False)
    assert [f for f in PAYLOAD_FILES if (repo / f).exists()] == []
    assert f"Running stage 'edit@{name}'" in result.stdout  # DVC did reach the stage
    assert result.returncode != 0
    assert f"edit.recipes: key {name!r}" in result.stderr
    new = _listing(tmp_path) - before  # DVC's own state only: no output, no payload file
    assert _files_outside_dvc_state(tmp_path, new) == []


@pytest.mark.slow
def test_dvc_repro_of_a_hand_edited_params_yaml_runs_no_payload(project: Path, tmp_path: Path):
    """The same through `dvc repro` and a params.yaml edited by hand (any key at all)."""
    for rel in ("data/interim/images.csv", "data/textual_inversion/learned_embeds.safetensors"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("x\n")
    (project / "data/images").mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    for name in ("x$(touch p)", "x'$(touch q)'", "x`touch r`"):
        raw["edit"]["recipes"][name] = raw["edit"]["recipes"]["neon"]
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    before = _listing(tmp_path)
    results = [
        run(["dvc", "repro", "--single-item", f"edit@{name}"], project, check=False)
        for name in ("x$(touch p)", "x'$(touch q)'", "x`touch r`")
    ]
    assert [f for f in PAYLOAD_FILES if (project / f).exists()] == []
    for result in results:
        assert result.returncode != 0
        assert "recipe names must match ^[a-z0-9_]+$" in result.stderr
    new = _listing(tmp_path) - before
    assert _files_outside_dvc_state(tmp_path, new) == []
