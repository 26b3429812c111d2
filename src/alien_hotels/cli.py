"""`alien-hotels`: one command per pipeline stage, plus config helpers.

Every stage command validates `params.yaml` before touching any data, so a bad parameter fails
fast with a message naming the key. DVC runs these same commands (see `dvc.yaml`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from alien_hotels import stages
from alien_hotels.common import StageError
from alien_hotels.config import ConfigError, compose_params, load_params, validate_params

app = typer.Typer(
    help="Caption, cluster and edit hotel photos for alien guests: the DVC pipeline's stages.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="Params file composed from conf/ by Hydra.")
]


def _run(stage, params_path: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(params_path)
        stage(params)
    except (ConfigError, StageError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None


@app.command()
def sample(params: ParamsOption = Path("params.yaml")) -> None:
    """Choose hotels and images from the dataset (data.*)."""
    _run(stages.run_sample, params)


@app.command()
def caption(params: ParamsOption = Path("params.yaml")) -> None:
    """Caption every sampled image (caption.*)."""
    _run(stages.run_caption, params)


@app.command()
def preprocess(params: ParamsOption = Path("params.yaml")) -> None:
    """Truncate, lemmatize and assign room types (text.*, room_types.*)."""
    _run(stages.run_preprocess, params)


@app.command()
def features(params: ParamsOption = Path("params.yaml")) -> None:
    """TF-IDF then TruncatedSVD (features.*)."""
    _run(stages.run_features, params)


@app.command()
def cluster(params: ParamsOption = Path("params.yaml")) -> None:
    """k-means sweep, elbow, scores and cluster report (cluster.*)."""
    _run(stages.run_cluster, params)


@app.command(name="map")
def map_(params: ParamsOption = Path("params.yaml")) -> None:
    """t-SNE map as HTML and PNG (map.*)."""
    _run(stages.run_map, params)


@app.command(name="synth-captions")
def synth_captions(
    n: Annotated[int, typer.Argument(help="Rows to generate (Hotels-50K train: 1100000).")],
    out: Annotated[Path, typer.Option(help="CSV to write (the study's sample columns).")] = Path(
        "data/synthetic/captions.csv"
    ),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    source: Annotated[Path, typer.Option(help="Captioned sample to learn from.")] = Path(
        "data/bundled/hotels_sample.csv"
    ),
) -> None:
    """Synthetic captions shaped like the bundled ones, for benchmarks (see docs/performance.md)."""
    from alien_hotels.common import write_csv
    from alien_hotels.datagen.captions import CaptionVocabulary, synthetic_captions

    try:
        table = synthetic_captions(n, seed=seed, vocabulary=CaptionVocabulary.from_csv(source))
    except (StageError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    write_csv(table, out)
    typer.echo(f"wrote {len(table)} rows to {out}")


@app.command()
def compose(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Hydra overrides, e.g. text.max_words=20")
    ] = None,
    conf_dir: Annotated[Path, typer.Option(help="Hydra config directory.")] = Path("conf"),
) -> None:
    """Print params.yaml composed from conf/ (what `dvc exp run -S` writes)."""
    try:
        raw = compose_params(overrides or [], conf_dir)
        validate_params(raw, source="composed config")
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    except Exception as exc:  # Hydra's own override and missing-group errors
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    sys.stdout.write(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))


@app.command()
def check(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate params.yaml and print the typed config."""
    try:
        typer.echo(load_params(params).model_dump_json(indent=2))
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None


if __name__ == "__main__":
    app()
