"""What a run needs before it starts, and what to say when it stopped.

- The optional extras (`ml`, `ray` in pyproject.toml) the params call for: found missing before
  any work, so a run that cannot caption stops before it samples or fetches anything, with one
  line naming the param, the install command and its cost.
- After a failed `dvc exp run -S`, params.yaml holds values the workspace's results were not
  made with: which, and how to go back (the `hint:` of a failed stage, `alien-hotels summary`).

Light on purpose (no stage code, no heavy imports): every command runs it first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from alien_hotels.config import ConfigError

# -- optional extras (pyproject.toml): found missing before any work ---------------------------

# A module of each extra that its code imports (find_spec imports nothing): `make setup` installs
# neither, and without this check the first sign was a traceback after earlier stages had run.
EXTRA_MODULES = {
    "ml": ("torch", "torchvision", "open_clip", "clip_interrogator", "diffusers", "transformers"),
    "ray": ("ray",),
}
# Measured on Linux x86-64 over a base install (`pip install --dry-run --report`, installed
# files): ml is 50 packages, 3 GB of wheels (PyPI's torch brings its CUDA libraries), 5.9 GB
# installed; ray 10 packages, 0.4 GB installed. `make setup-full` from scratch took 4 min on 2
# cores with a local package mirror; a slow link adds the download.
EXTRA_COST = {
    "ml": "about 3 GB to download, 6 GB installed, 4+ min",
    "ray": "0.4 GB installed",
}
EXTRA_INSTALL = {
    "ml": '`make setup-full` (or `pip install -e ".[ml]"`)',
    "ray": '`pip install -e ".[ray]"` (or `make setup-full`)',
}


def _usable_images(manifest: Path) -> int:
    """Rows of the images manifest with status `ok` and a path (as tables.usable_images counts
    them; read with csv so this module imports no stage code)."""
    import csv

    if not manifest.is_file():
        return 0
    with manifest.open(newline="", encoding="utf-8") as f:
        return len(
            {
                row.get("image_id")
                for row in csv.DictReader(f)
                if (row.get("status") or "").strip() == "ok" and (row.get("path") or "").strip()
            }
        )


def extras_needed(stage: str, params) -> dict[str, str]:
    """extra -> the param that needs it, for `stage` run with `params`.

    `sample` and `images` answer for `caption` and `room_types` too: every run goes through them,
    so a run that cannot caption stops before it samples or fetches anything. The edit stages
    need the ml extra only for the images they have (none on the bundled sample), so each checks
    its own at its start: a text-half run (`dvc repro map`) never needs it.
    """
    needs: dict[str, str] = {}
    caption, room = params.caption, params.room_types
    if stage in ("sample", "images", "caption") and caption.method == "clip_interrogator":
        if caption.executor == "ray":  # the driver; the workers bring their own
            needs["ray"] = "caption.method=clip_interrogator with caption.executor=ray"
        else:
            needs["ml"] = "caption.method=clip_interrogator"
    if stage in ("sample", "images", "room_types"):
        if room.source == "image":
            needs.setdefault("ml", "room_types.source=image")
        elif room.source == "auto" and caption.method == "clip_interrogator":
            needs.setdefault("ml", "room_types.source=auto with caption.method=clip_interrogator")
    edit = params.edit
    if stage == "textual_inversion" and edit.textual_inversion.reference_dir is not None:
        needs["ml"] = "edit.textual_inversion.reference_dir"
    if stage in ("edit", "edit_sweep", "imagic"):
        limit = {"edit": edit.max_images, "imagic": edit.imagic.max_images}.get(stage)
        images = _usable_images(Path("data/interim/images.csv"))
        if images and limit != 0:
            executor = edit.executor if stage == "edit" else "local"
            extra = "ray" if executor == "ray" else "ml"
            needs[extra] = f"{stage} on {images} image(s) (edit.executor={executor})"
    return needs


def require_extras(needs: dict[str, str]) -> None:
    """One line naming the first missing extra, the param that needs it, the fix and its cost."""
    from importlib.util import find_spec

    for extra, why in needs.items():
        missing = [m for m in EXTRA_MODULES[extra] if find_spec(m) is None]
        if missing:
            raise ConfigError(missing_extra(why, extra, missing))


def missing_extra(why: str, extra: str, missing: list[str]) -> str:
    shown = ", ".join(missing[:2]) + (", ..." if len(missing) > 2 else "")
    return (
        f"{why} needs the `{extra}` extra, not installed here (no {shown}): "
        f"{EXTRA_INSTALL[extra]}, {EXTRA_COST[extra]}"
    )


# Top-level modules only an extra brings: a stage that imports one that the check above did not
# foresee still ends with the one line, not a traceback.
EXTRA_ONLY = {
    **{m: "ml" for m in EXTRA_MODULES["ml"]},
    **dict.fromkeys(("huggingface_hub", "safetensors", "skimage", "peft", "accelerate"), "ml"),
    "ray": "ray",
}


# -- a failed run: what params.yaml now holds and how to go back ------------------------------


def _leaves(value, prefix: str) -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, sub in value.items():
            out.update(_leaves(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _lookup(tree, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


_ABSENT = object()


def params_drift(params_path: Path, lock_path: Path = Path("dvc.lock")) -> dict[str, tuple]:
    """key -> (value in params.yaml, value the workspace's results were made with), for every
    param some stage of dvc.lock recorded with another value: what a failed or pending
    `dvc exp run -S` left in params.yaml. Empty when either file is missing or unreadable."""
    try:
        current = yaml.safe_load(params_path.read_text())
        lock = yaml.safe_load(lock_path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(lock, dict) or not isinstance(lock.get("stages"), dict):
        return {}
    drift: dict[str, tuple] = {}
    for entry in lock["stages"].values():
        recorded = ((entry or {}).get("params") or {}).get(params_path.name) or {}
        for key, value in recorded.items():
            now = _leaves(_lookup(current, key), key)
            for leaf, was in _leaves(value, key).items():
                if now.get(leaf, _ABSENT) != was:
                    drift[leaf] = (now.get(leaf, _ABSENT), was)
            for leaf in now.keys() - _leaves(value, key).keys():
                drift[leaf] = (now[leaf], _ABSENT)
    return dict(sorted(drift.items()))


def _override(key: str, value) -> str | None:
    """`key=value` as `dvc exp run -S` takes it, for simple scalars only."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, int | float):
        return f"{key}={value}"
    if isinstance(value, str) and re.fullmatch(r"[\w./-]+", value):
        return f"{key}={value}"
    return None


def way_back(params_path: Path, lock_path: Path = Path("dvc.lock")) -> str | None:
    """How to return to the params of the results in the workspace, or None when they agree."""
    drift = params_drift(params_path, lock_path)
    if not drift:
        return None

    def shown(value) -> str:
        return "(absent)" if value is _ABSENT else json.dumps(value, default=str)

    changed = {k: v for k, v in drift.items() if _ABSENT not in v}
    added = len(drift) - len(changed)  # keys new (or gone) since the results were made
    parts = [f"{k}={shown(now)} (results: {shown(was)})" for k, (now, was) in changed.items()]
    parts = parts[:4] + ([f"{len(parts) - 4} more"] if len(parts) > 4 else [])
    parts += [f"{added} key(s) the results predate"] if added else []
    overrides = [_override(k, was) for k, (_, was) in changed.items()]
    rerun = ""
    if not added and len(overrides) <= 4 and None not in overrides:
        rerun = ", or `dvc exp run " + " ".join(f"-S {o}" for o in overrides) + "`"
    return (
        f"{params_path} differs from the params of the results in the workspace (dvc.lock): "
        f"{', '.join(parts)}. The tracked results are unchanged. To go back: "
        f"`git checkout {params_path} && dvc repro` (the last commit's params){rerun}"
    )
