"""`alien-hotels`: one command per pipeline stage, plus config helpers.

Every stage command validates `params.yaml` before touching any data, so a bad parameter fails
fast with a message naming the key. DVC runs these same commands (see `dvc.yaml`).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
import yaml

from alien_hotels.common import StageError
from alien_hotels.config import (
    ConfigError,
    compose_params,
    load_params,
    read_params_file,
    validate_params,
)
from alien_hotels.preflight import (
    EXTRA_ONLY,
    extras_needed,
    missing_extra,
    require_extras,
    way_back,
)

app = typer.Typer(
    help="Caption, cluster and edit hotel photos for alien guests: the DVC pipeline's stages.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="Params file composed from conf/ by Hydra.")
]


@contextmanager
def _reported_errors(*errors: type[Exception]) -> Iterator[None]:
    """A config or input error ends the command with its message and exit code 2."""
    try:
        yield
    except (ConfigError, StageError, *errors) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None


def _run(stage: str, params_path: Path, *args) -> None:
    """Validate params and the extras they need, then run `alien_hotels.stages.<stage>.run`.

    The stage module is imported only here, so a command runs no other stage's code (each DVC
    stage depends on exactly the files it runs).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    finished = False
    try:
        with _reported_errors():
            params = load_params(params_path)
            require_extras(extras_needed(stage, params))
            try:
                importlib.import_module(f"alien_hotels.stages.{stage}").run(params, *args)
            except ModuleNotFoundError as exc:
                root = (exc.name or "").partition(".")[0]
                if root not in EXTRA_ONLY:
                    raise
                why = f"the {stage.replace('_', '-')} stage"
                raise ConfigError(missing_extra(why, EXTRA_ONLY[root], [root])) from None
        finished = True
    finally:
        # Under DVC (`dvc exp run -S`, `dvc repro`) params.yaml keeps the values that failed;
        # the stages' tracked outputs persist (dvc.yaml), so say how to go back to them.
        hint = None if finished or "DVC_STAGE" not in os.environ else way_back(params_path)
        if hint:
            typer.secho(f"hint: {hint}", fg=typer.colors.YELLOW, err=True)


@app.command()
def sample(params: ParamsOption = Path("params.yaml")) -> None:
    """Choose hotels and images from the dataset (data.*)."""
    _run("sample", params)


@app.command()
def images(params: ParamsOption = Path("params.yaml")) -> None:
    """Take sampled images from the local tree or download them (images.*)."""
    _run("images", params)


def pin_hash_seed() -> None:
    """Re-run this process with `PYTHONHASHSEED=0` unless it has it already.

    CLIP Interrogator's flavor chain iterates a `set` of phrases, whose order follows Python's
    per-process string hash, and in exact ties (candidates equal after the 77-token truncation)
    that order picks the flavor: the library's captions, and so ours, would differ from process
    to process. One fixed seed gives the same captions in every process (Ray workers get it
    too, see `distributed/pool.py`)."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "PYTHONHASHSEED": "0"})


@app.command()
def caption(params: ParamsOption = Path("params.yaml")) -> None:
    """Caption every sampled image (caption.*)."""
    pin_hash_seed()
    _run("caption", params)


@app.command()
def preprocess(params: ParamsOption = Path("params.yaml")) -> None:
    """Truncate, lemmatize and assign room types (text.*, room_types.*)."""
    _run("preprocess", params)


@app.command(name="room-types")
def room_types(params: ParamsOption = Path("params.yaml")) -> None:
    """Room type per image from captions, photos (CLIP zero-shot) or folders (room_types.*)."""
    _run("room_types", params)


@app.command()
def duplicates(params: ParamsOption = Path("params.yaml")) -> None:
    """Exact, perceptual, embedding and caption duplicates (duplicates.*)."""
    _run("duplicates", params)


@app.command()
def features(params: ParamsOption = Path("params.yaml")) -> None:
    """TF-IDF then TruncatedSVD, or CLIP embeddings of photos or captions (features.*)."""
    _run("features", params)


@app.command()
def cluster(params: ParamsOption = Path("params.yaml")) -> None:
    """k-means sweep, elbow, scores with their uncertainty, retrieval, report (cluster.*)."""
    _run("cluster", params)


@app.command()
def cards(params: ParamsOption = Path("params.yaml")) -> None:
    """A montage of the photos nearest each cluster's centre (cards.*)."""
    _run("cards", params)


@app.command(name="map")
def map_(params: ParamsOption = Path("params.yaml")) -> None:
    """t-SNE map as HTML and PNG (map.*)."""
    _run("map", params)


models_app = typer.Typer(
    help="Model weights the pipeline needs (captioning and editing).", no_args_is_help=True
)
app.add_typer(models_app, name="models")
MODEL_PARTS = ("caption", "edit")


@models_app.command("download")
def models_download(
    params: ParamsOption = Path("params.yaml"),
    caption_model: Annotated[
        str | None, typer.Option(help="Caption model key (default: caption.caption_model_name).")
    ] = None,
    clip_model: Annotated[
        str | None,
        typer.Option(help="open_clip arch/pretrained (default: caption.clip_model_name)."),
    ] = None,
    labels: Annotated[
        bool, typer.Option(help="Also fetch the precomputed label embeddings for the CLIP model.")
    ] = True,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Fetch only the models of this part: caption or edit (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print each model's files and sizes; download nothing.")
    ] = False,
) -> None:
    """Download every model the configured pipeline needs (caption model, CLIP, label
    embeddings; every recipe's diffusion model, CLIPSeg, the score CLIP) into the caches the
    stages read offline (HF_HOME; caption.label_cache_dir): only the files the loaders read."""
    with _reported_errors():
        require_extras({"ml": "`alien-hotels models download`"})
    from alien_hotels import modelhub
    from alien_hotels.captioning.models import download_refs
    from alien_hotels.editing.models import weight_refs

    with _reported_errors():
        parts = only or list(MODEL_PARTS)
        unknown = sorted(set(parts) - set(MODEL_PARTS))
        if unknown:
            raise ConfigError(f"--only {unknown[0]}: choose from {', '.join(MODEL_PARTS)}")
        # Without a params file, the defaults come from conf/ (the one source of defaults).
        base = load_params(params) if params.is_file() else validate_params(compose_params())
        overrides = {}
        if caption_model is not None:
            overrides["caption_model_name"] = caption_model
        if clip_model is not None:
            overrides["clip_model_name"] = clip_model
        raw = base.model_dump()
        raw["caption"] = {**raw["caption"], **overrides}
        cfg = validate_params(raw, source="models download options")
        refs = download_refs(cfg.caption, labels) if "caption" in parts else []
        refs += weight_refs(cfg.edit) if "edit" in parts else []
        entries = modelhub.plan(refs)
        for line in modelhub.describe(entries):
            typer.echo(line)
        if not dry_run:
            for path in modelhub.download(entries):
                typer.echo(f"ok {path}")


datagen_app = typer.Typer(
    help="Write synthetic datasets for tests and benchmarks.", no_args_is_help=True
)
app.add_typer(datagen_app, name="datagen")


@datagen_app.command("hotels50k")
def datagen_hotels50k(
    out: Annotated[Path, typer.Option(help="Dataset root; CSVs go to OUT/dataset/.")] = Path(
        "data/raw/hotels50k"
    ),
    rows: Annotated[int, typer.Option(min=1, help="Training rows (train_set.csv).")] = 1_124_215,
    hotels: Annotated[int, typer.Option(min=1, help="Hotels in hotel_info.csv.")] = 50_000,
    chains: Annotated[int, typer.Option(min=1, help="Chains in chain_info.csv.")] = 92,
    test_rows: Annotated[
        int | None, typer.Option(min=1, help="Rows of test_set.csv (default: in proportion).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    base_url: Annotated[
        str | None, typer.Option(help="Serve images from here: URL/<source>/<image_id>.jpg.")
    ] = None,
    captions: Annotated[
        bool, typer.Option(help="Add a synthetic `description` caption column (not published).")
    ] = False,
) -> None:
    """Synthetic Hotels-50K metadata with the real files' columns, scale and skew."""
    from alien_hotels.datagen.hotels50k import generate

    meta = generate(out, rows, hotels, chains, test_rows, seed, base_url, captions=captions)
    typer.echo(
        f"wrote {meta.train_rows} train and {meta.test_rows} test rows, {meta.hotels} hotels, "
        f"{meta.chains} chains to {meta.dataset_dir}"
    )


@datagen_app.command("captions")
def datagen_captions(
    n: Annotated[int, typer.Argument(help="Rows to generate (Hotels-50K train: 1100000).")],
    out: Annotated[Path, typer.Option(help="CSV to write (the study's sample columns).")] = Path(
        "data/synthetic/captions.csv"
    ),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    source: Annotated[Path, typer.Option(help="Captioned sample to learn from.")] = Path(
        "data/bundled/hotels_sample.csv"
    ),
) -> None:
    """Synthetic captions like the bundled ones, for benchmarks (docs/design/performance.md)."""
    from alien_hotels.common import write_csv
    from alien_hotels.datagen.captions import CaptionVocabulary, synthetic_captions

    with _reported_errors(ValueError):
        table = synthetic_captions(n, seed=seed, vocabulary=CaptionVocabulary.from_csv(source))
    write_csv(table, out)
    typer.echo(f"wrote {len(table)} rows to {out}")


# DVC sets DVC_STAGE to the stage it runs: `edit@<recipe>`, after `<dvc.yaml path>:` when run
# from another folder. The name must be a recipe name (checked again against edit.recipes).
DVC_EDIT_STAGE = re.compile(r"(?:^|:)edit@(?P<recipe>[a-z0-9_]+)\Z")  # \Z: no trailing newline


def recipe_from_dvc_stage() -> str:
    """The recipe of the `edit@<recipe>` stage DVC is running.

    dvc.yaml's `foreach` would put each key of edit.recipes into the stage's shell command, and
    params.yaml (which `dvc exp run -S` writes) can hold any key: `x$(touch p)` ran `touch p`
    before any check. So the command names no recipe; it is read here, from the environment,
    where no shell interprets it.
    """
    stage = os.environ.get("DVC_STAGE")
    if stage is None:
        raise ConfigError("--dvc-stage: DVC_STAGE is not set (`dvc repro`, `dvc exp run` set it)")
    match = DVC_EDIT_STAGE.search(stage)
    if match is None:
        raise ConfigError(f"--dvc-stage: DVC_STAGE={stage!r} is not an edit@<recipe> stage")
    return match["recipe"]


@app.command()
def edit(
    recipe: Annotated[
        str | None, typer.Argument(help="Recipe name (a key of edit.recipes); default: all.")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    dvc_stage: Annotated[
        bool,
        typer.Option(
            "--dvc-stage",
            help="Edit with the recipe of the DVC stage being run ($DVC_STAGE, edit@<recipe>).",
        ),
    ] = False,
) -> None:
    """Diffusion-edit the images for alien guests with one recipe (edit.recipes.<name>)."""
    if dvc_stage:
        with _reported_errors():
            if recipe is not None:
                raise ConfigError("give a recipe or --dvc-stage, not both")
            load_params(params)  # a bad recipe name in params.yaml is named as such, first
            recipe = recipe_from_dvc_stage()
    _run("edit", params, recipe)


@app.command(name="edit-sweep")
def edit_sweep(params: ParamsOption = Path("params.yaml")) -> None:
    """Content preservation against edit success over a grid (edit.sweep.*)."""
    _run("edit_sweep", params)


@app.command(name="textual-inversion")
def textual_inversion(params: ParamsOption = Path("params.yaml")) -> None:
    """Learn the style token from reference images (edit.textual_inversion.*)."""
    _run("textual_inversion", params)


@app.command()
def imagic(params: ParamsOption = Path("params.yaml")) -> None:
    """Imagic edits of the images for every alpha (edit.imagic.*)."""
    _run("imagic", params)


@app.command(name="edit-report")
def edit_report(params: ParamsOption = Path("params.yaml")) -> None:
    """Per-recipe means (metrics/editing.json) and the hotel ranking for alien guests."""
    _run("edit_report", params)


@app.command()
def summary(
    metrics_dir: Annotated[Path, typer.Option(help="Where the stages wrote metrics.")] = Path(
        "metrics"
    ),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Print the headline numbers of the last run (a readable `dvc metrics show`)."""
    path = metrics_dir / "clustering.json"
    with _reported_errors():
        if params.exists():  # a broken params.yaml is one line here as in every command
            read_params_file(params)
    # After a failed `dvc exp run -S`, params.yaml holds values the results were not made with
    # (and `dvc repro` would fail the same way): say so, and how to go back.
    hint = way_back(params, params.parent / "dvc.lock")
    with _reported_errors():
        if not path.is_file():
            raise StageError(f"{path} not found: " + (hint or "run `dvc repro` first"))
    if hint:
        typer.secho(f"note: {hint}", fg=typer.colors.YELLOW, err=True)
    metrics = json.loads(path.read_text())
    silhouette = metrics.get("silhouette")
    typer.echo(f"documents      {metrics['n_docs']}")
    typer.echo(f"k              {metrics['k']} ({metrics.get('k_source', '?')})")
    typer.echo(f"silhouette     {'n/a' if silhouette is None else f'{silhouette:.3f}'}")
    from alien_hotels.reports import chosen_source

    source = chosen_source(metrics)

    def scores(nmi: float | None, ari: float | None) -> str:
        return "n/a" if nmi is None else f"{nmi:.3f}   ARI {ari:.3f}"

    typer.echo(
        f"NMI room type  {scores(metrics['nmi_room_type'], metrics['ari_room_type'])}"
        f"   (room types from {source})"
    )
    # Every room-type source of the run side by side: caption-based ones are circular (the
    # clusters are made of the same words), image and folder ones are not.
    others = [s for s in ("captions", "image", "folder") if f"nmi_room_type_{s}" in metrics]
    if others != [source]:
        for s in others:
            nmi, ari = metrics[f"nmi_room_type_{s}"], metrics[f"ari_room_type_{s}"]
            typer.echo(f"  from {s:<9}  {scores(nmi, ari)}")
    typer.echo(f"NMI hotel      {metrics['nmi_hotel']:.3f}   ARI {metrics['ari_hotel']:.3f}")
    nmi_room = metrics["nmi_room_type"]
    verdict = "room types" if nmi_room is not None and nmi_room > metrics["nmi_hotel"] else "hotels"
    typer.echo(f"clusters follow {verdict} (by NMI)")


# `dvc exp show` prints every param, metric and dependency hash: dozens of columns. `exps` keeps
# the params that differ between experiments and the cluster metrics the study is about, in its
# own table (src/alien_hotels/exps.py): dvc's hides params behind `…` when it is too wide, every
# one in 80 columns. `--csv`/`--md`/`--json` get dvc's own output of those columns (below).
# ARI: `alien-hotels summary`.
PARAM_SECTIONS = ("data", "images", "caption", "text", "room_types", "features", "cluster", "map")


def exp_show_args() -> list[str]:
    from alien_hotels.exps import METRICS  # the table's metrics, in dvc's own output too

    sections = "|".join((*PARAM_SECTIONS, "edit"))
    metrics = "|".join(METRICS)
    return [
        "dvc",
        "exp",
        "show",
        "--only-changed",
        "--no-pager",
        "--keep",
        rf"^Experiment$|^(metrics/clustering\.json:)?({metrics})$",
        "--drop",
        rf"^(?!({sections})\.)",
    ]


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exps(ctx: typer.Context) -> None:
    """Compare experiments: the params that differ and the cluster metrics (k, silhouette, AMI
    with room type and hotel), fitted to the terminal (80 columns hold three changed params).

    Extra options go to `dvc exp show` (e.g. `-A`, `--sort-by ami_room_type`, `--csv`).
    """
    import json
    import shutil
    import subprocess

    from alien_hotels import exps as exps_table

    if {"--csv", "--md", "--json"} & set(ctx.args):  # machine-readable: dvc's own, not fitted
        raise typer.Exit(subprocess.call([*exp_show_args(), *ctx.args]))
    dvc_args = exps_table.split_args(ctx.args)[0]
    shown = subprocess.run(
        ["dvc", "exp", "show", "--json", "--no-pager", *dvc_args], capture_output=True, text=True
    )
    if shown.returncode != 0:
        sys.stderr.write(shown.stderr)
        raise typer.Exit(shown.returncode)
    width = shutil.get_terminal_size().columns  # COLUMNS, else the terminal's, else 80
    sys.stdout.write(exps_table.table(json.loads(shown.stdout), width, ctx.args))


@app.command()
def compose(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Hydra overrides, e.g. text.max_words=20")
    ] = None,
    conf_dir: Annotated[Path, typer.Option(help="Hydra config directory.")] = Path("conf"),
) -> None:
    """Print params.yaml composed from conf/ (what `dvc exp run -S` writes)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # Hydra's own override and missing-group errors are user errors too.
    with _reported_errors(HydraException, OmegaConfBaseException):
        try:
            raw = compose_params(overrides or [], conf_dir)
        except HydraException as exc:
            raise ConfigError(unknown_key_hint(str(exc), overrides or [], conf_dir)) from None
        validate_params(raw, source="composed config")
    sys.stdout.write(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))


def unknown_key_hint(message: str, overrides: list[str], conf_dir: Path) -> str:
    """Hydra's "Could not override 'cluster.kk'. To append to your config use +cluster.kk=8"
    advises adding the key, which is wrong for a typo (and `+` only moves the error to the params
    check): name the closest key of the config instead (difflib)."""
    import difflib

    found = re.match(r"Could not override '([^']+)'", message)
    if not found:
        return message
    key = found.group(1)

    def leaves(tree, prefix=""):
        for name, value in tree.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    known = list(leaves(compose_params([], conf_dir)))
    close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
    value = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")), "...")
    if not close:
        return f"{key} is not a key of the config (conf/); `alien-hotels check` lists every key"
    others = f" (or {', '.join(close[1:])})" if close[1:] else ""
    return f"{key} is not a key of the config: did you mean {close[0]}={value}?{others}"


@app.command()
def check(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate params.yaml and print the typed config."""
    with _reported_errors():
        typer.echo(load_params(params).model_dump_json(indent=2))


if __name__ == "__main__":
    app()
