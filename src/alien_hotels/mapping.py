"""Stage 6, `map`: t-SNE of the SVD features, drawn as an interactive HTML map and a PNG.

The study drew `TSNE(perplexity=30, n_iter=300)` with bokeh. openTSNE's FFT-accelerated
gradients keep this fast at Hotels-50K scale; scikit-learn's exact recipe stays selectable.

Scale (docs/design/performance.md): above `map.fit_sample` documents the map is fitted on a seeded
sample and every other row is placed into it (`map.place`), so `clusters.csv` has coordinates for
every row; the HTML and PNG draw a seeded subsample of at most `map.max_plot_points` points.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from threadpoolctl import threadpool_limits

from alien_hotels.common import (
    Section,
    Seed,
    StageError,
    atomic_path,
    plotly_text,
    resolve_n_jobs,
    seeded_rows,
)

log = logging.getLogger(__name__)

EXACT_NEIGHBOUR_ROWS = 10_000  # t-SNE affinities from exact neighbours up to here, then Annoy
SKLEARN_EXAGGERATION_ITER = 250  # scikit-learn's early exaggeration: not a parameter there
OTHER_PREFIX = "~ "  # sorts after names, so the lumped group comes last in legends
COLOR_BY = {"cluster": "cluster label", "hotel": "hotel", "room_type": "room type"}


class MapConfig(Section):
    """`map.*`: t-SNE settings and how the map is drawn."""

    method: Literal["opentsne", "sklearn"]
    perplexity: float = Field(gt=0)
    # Iterations after the early-exaggeration phase (`early_exaggeration_iter` iterations first).
    # scikit-learn's phase is fixed at 250 iterations: method=sklearn runs 250 + n_iter.
    n_iter: int = Field(ge=50)
    early_exaggeration_iter: int = Field(ge=0)
    # Barnes-Hut's accuracy (openTSNE's theta, scikit-learn's angle): larger is faster and
    # coarser. The default schedule and theta keep trustworthiness at least that of openTSNE's
    # own defaults (250 + 500 iterations, theta 0.5) in 0.5x its time (docs/performance.md).
    theta: float = Field(gt=0, le=1)
    random_state: Seed
    # Threads of the t-SNE gradient and the BLAS/OpenMP pools; null: every core this process
    # may use (`common.available_cores`). The map's bytes do not depend on it.
    n_jobs: int | None = Field(ge=1)
    # openTSNE's negative gradient: bh (Barnes-Hut), fft (FIt-SNE's interpolation), or auto
    # (openTSNE's rule: bh below 10,000 fitted rows, fft above; the faster of the two at each
    # size for the same trustworthiness, docs/performance.md).
    gradient: Literal["auto", "bh", "fft"]
    point_size: int = Field(ge=1)
    # t-SNE is fitted on at most this many rows (seeded); the others are placed into the fitted
    # map (`place`). null: fit every row.
    fit_sample: int | None = Field(ge=100)
    # knn_median: the median map position of a row's `place_neighbors` nearest fitted rows in
    # feature space (openTSNE's "median" initialisation; fast). transform: openTSNE's
    # `transform`, which also optimises the placed rows against the fixed map (slower).
    place: Literal["knn_median", "transform"]
    place_neighbors: int = Field(ge=1)
    # The HTML and PNG maps draw a seeded subsample of at most this many points (a browser
    # struggles with more); clusters.csv keeps every row. null: draw all.
    max_plot_points: int | None = Field(ge=100)
    # Colour groups per view (clusters, hotels, room types): the largest ones by points drawn;
    # the rest share one "other" colour (thousands of hotels would mean thousands of traces).
    max_groups: int = Field(ge=1)

    @model_validator(mode="after")
    def _check_place(self) -> MapConfig:
        if self.place == "transform" and self.method != "opentsne":
            raise ValueError("map.place=transform needs map.method=opentsne; use knn_median")
        return self

    @property
    def threads(self) -> int:
        """`n_jobs` resolved: null means the cores available to this process."""
        return resolve_n_jobs(self.n_jobs)


def embed_2d(embedding: np.ndarray, cfg: MapConfig) -> np.ndarray:
    """2-D t-SNE coordinates for each row of `embedding`."""
    n_docs = len(embedding)
    if n_docs < 2:
        raise StageError(f"map: t-SNE needs at least 2 documents, got {n_docs}")
    rows = seeded_rows(n_docs, cfg.fit_sample, cfg.random_state)
    cfg = cfg.updated(perplexity=perplexity_for(n_docs if rows is None else len(rows), cfg))
    data = np.asarray(embedding, dtype=np.float64)
    if data.shape[1] < 2:  # one SVD component (a tiny folder): the PCA initialisation needs two
        data = np.hstack([data, np.zeros_like(data)])
    with threadpool_limits(cfg.threads):
        return _embed(data, rows, cfg)


def perplexity_for(n_fit: int, cfg: MapConfig) -> float:
    """`map.perplexity`, lowered (with a warning) to what `n_fit` fitted rows allow: t-SNE needs
    3 * perplexity < rows (openTSNE's neighbour count), so a small folder gets (rows - 1) / 3."""
    if n_fit < 2:
        raise StageError(f"map: t-SNE needs at least 2 documents, got {n_fit}")
    if 3 * cfg.perplexity < n_fit:
        return cfg.perplexity
    used = (n_fit - 1) / 3
    log.warning(
        "map.perplexity=%g is too large for %d documents (t-SNE needs 3 * perplexity < "
        "documents, map.fit_sample=%s): using %.4g",
        cfg.perplexity,
        n_fit,
        cfg.fit_sample,
        used,
    )
    return used


def _embed(data: np.ndarray, rows: np.ndarray | None, cfg: MapConfig) -> np.ndarray:
    n_docs = len(data)
    if rows is None:
        return _fit_tsne(data, cfg)[0]
    rest = np.setdiff1d(np.arange(n_docs), rows, assume_unique=True)
    fitted, model = _fit_tsne(data[rows], cfg)
    coords = np.empty((n_docs, 2), dtype=np.float32)
    coords[rows] = fitted
    coords[rest] = place_rows(data[rest], data[rows], fitted, cfg, model)
    return coords


def place_rows(
    new: np.ndarray, reference: np.ndarray, reference_coords: np.ndarray, cfg: MapConfig, model=None
) -> np.ndarray:
    """Map coordinates for rows not fitted, from the fitted reference rows (see `map.place`)."""
    if cfg.place == "transform":
        if model is None:
            raise StageError("map.place=transform needs the fitted openTSNE embedding")
        return np.asarray(model.transform(new), dtype=np.float32)
    from sklearn.neighbors import NearestNeighbors

    k = min(cfg.place_neighbors, len(reference))
    index = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(reference.astype(np.float32))
    coords = np.empty((len(new), 2), dtype=np.float32)
    step = 100_000  # bounds the neighbour arrays' memory
    for start in range(0, len(new), step):
        chunk = new[start : start + step].astype(np.float32)
        # scikit-learn shares the reference rows out among its threads when a chunk has no more
        # rows than the reference; which of equally distant rows (identical captions) are the
        # neighbours then depends on the thread count. Such chunks are small: one thread.
        # Otherwise each thread takes whole rows of the chunk, the same on any thread count.
        few = len(chunk) <= len(reference)
        with threadpool_limits(1) if few else contextlib.nullcontext():
            neighbours = index.kneighbors(chunk, return_distance=False)
        coords[start : start + step] = np.median(reference_coords[neighbours], axis=1)
    return coords


def _fit_tsne(data: np.ndarray, cfg: MapConfig):
    """(coordinates, fitted model or None) for `data`."""
    if cfg.method == "sklearn":
        from sklearn.manifold import TSNE

        tsne = TSNE(
            n_components=2,
            perplexity=cfg.perplexity,
            max_iter=SKLEARN_EXAGGERATION_ITER + cfg.n_iter,
            angle=cfg.theta,
            random_state=cfg.random_state,
            init="pca",
        )
        return tsne.fit_transform(data).astype(np.float32), None
    from openTSNE import TSNE as OpenTSNE
    from openTSNE import affinity, initialization

    # openTSNE's own PCA start (std 1e-4), rounded to 2^-36: its BLAS-kernel noise (~1e-19) would
    # otherwise change the map's bytes from one CPU to another; the optimisation itself does not.
    start = initialization.pca(data, random_state=cfg.random_state)
    start = np.round(start * 2.0**36) / 2.0**36 + 0.0
    # The affinities on one thread, whatever `n_jobs`: Annoy's trees come out different when
    # built on more threads, and with them the map. The gradient (bh or fft) gives the same bits
    # on any number of threads. Exact neighbours up to EXACT_NEIGHBOUR_ROWS fitted rows: at the
    # default 3,000 they cost 0.1 s where Annoy's index (openTSNE's choice from 1,000) took 0.7.
    method = "exact" if len(data) <= EXACT_NEIGHBOUR_ROWS else "annoy"
    with threadpool_limits(1):
        affinities = affinity.MultiscaleMixture(
            data,
            cfg.perplexity,
            method=method,
            metric="euclidean",
            n_jobs=1,
            random_state=cfg.random_state,
            verbose=False,
        )
    tsne = OpenTSNE(
        n_components=2,
        perplexity=cfg.perplexity,
        n_iter=cfg.n_iter,
        early_exaggeration_iter=cfg.early_exaggeration_iter,
        theta=cfg.theta,
        random_state=cfg.random_state,
        n_jobs=cfg.threads,
        negative_gradient_method=cfg.gradient,
        verbose=False,
    )
    model = tsne.fit(affinities=affinities, initialization=start)
    return np.asarray(model, dtype=np.float32), model


# Trustworthiness (scikit-learn's, 5 neighbours) of the map on at most this many fitted rows
# (a seeded sample): it ranks all pairs, so its cost grows with the square of the rows.
TRUSTWORTHINESS_ROWS = 3000
TRUSTWORTHINESS_NEIGHBORS = 5


def trustworthiness(
    embedding: np.ndarray, coords: np.ndarray, rows: np.ndarray | None, random_state: int
) -> float | None:
    """How well the map keeps each fitted row's nearest neighbours (1: all of them), measured on
    the rows t-SNE was fitted on (`rows`, None: all), at most `TRUSTWORTHINESS_ROWS` of them;
    None for fewer than 3 rows (no neighbour to rank).

    Feature-space distances are summed exactly (scipy's `cdist`, no BLAS): the features lie on
    a 2^-17 grid, so the ranks, ties included, are the same on any CPU and thread count."""
    from scipy.spatial.distance import cdist
    from sklearn.manifold import trustworthiness as sklearn_trustworthiness

    fitted = np.arange(len(embedding)) if rows is None else rows
    sample = seeded_rows(len(fitted), TRUSTWORTHINESS_ROWS, random_state)
    if sample is not None:
        fitted = fitted[sample]
    k = min(TRUSTWORTHINESS_NEIGHBORS, (len(fitted) - 1) // 2)
    if k < 1:
        return None
    data = np.asarray(embedding[fitted], dtype=np.float64)
    distances = cdist(data, data, "sqeuclidean")  # same ranks as euclidean
    with threadpool_limits(1):
        value = sklearn_trustworthiness(
            distances, np.asarray(coords[fitted]), n_neighbors=k, metric="precomputed"
        )
    return float(value)


def plot_subsample(table: pd.DataFrame, cfg: MapConfig) -> pd.DataFrame:
    """The rows the HTML and PNG maps draw: all, or a seeded sample of `max_plot_points`."""
    rows = seeded_rows(len(table), cfg.max_plot_points, cfg.random_state)
    return table if rows is None else table.iloc[rows]


def write_html_map(
    table: pd.DataFrame, target: str | Path, cfg: MapConfig, n_total: int | None = None
) -> None:
    """Self-contained plotly map; a dropdown switches colour by cluster, hotel or room type.

    `table` needs columns x, y, cluster_label, hotel_name, room_type, caption, text; `n_total`
    is the number of mapped rows when `table` is a subsample of them. Every text from data goes
    through `plotly_text`: plotly would draw `<a href>` or `style=` in a name as live HTML.
    """
    import plotly.io as pio

    fig, hover_rows = html_map_figure(table, cfg, n_total)
    with atomic_path(target) as tmp:
        # A fixed div id keeps the file byte-identical across runs (DVC compares hashes).
        pio.write_html(
            with_hover_data(fig, hover_rows),
            tmp,
            include_plotlyjs=True,
            full_html=True,
            div_id="cluster-map",
            validate=False,
        )


def with_hover_data(fig, hover_rows: list[np.ndarray]) -> dict:
    """`fig.to_dict()` with each trace's `customdata` set to its array of `hover_rows`.

    The same dict plotly makes when the arrays are given to the traces, without its cost at
    20,000 points (validating, then deep-copying twice, 100,000 strings; ~1 s): plotly keeps a
    2-D object array as such, and `to_dict` changes only numeric arrays (tests/test_mapping.py
    compares the HTML of both ways)."""
    figure = fig.to_dict()
    for trace, rows in zip(figure["data"], hover_rows, strict=True):
        trace["customdata"] = rows
    return figure


def html_map_figure(table: pd.DataFrame, cfg: MapConfig, n_total: int | None = None):
    """The HTML map's figure with empty hover data, and the hover data of each trace (one
    object array per trace: label, hotel, room type, wrapped caption, text; see
    `with_hover_data`). Each row's hover texts are escaped and wrapped once, not per view."""
    import plotly.graph_objects as go

    hover = (
        "<b>%{customdata[0]}</b><br>hotel: %{customdata[1]}<br>room type: %{customdata[2]}"
        "<br>caption: %{customdata[3]}<br>text: %{customdata[4]}<extra></extra>"
    )
    columns = {"cluster": "cluster_label", "hotel": "hotel_name", "room_type": "room_type"}
    customdata = hover_columns(table)
    no_rows = np.empty((0, customdata.shape[1]), dtype=object)  # replaced below
    fig = go.Figure()
    trace_rows: list[np.ndarray] = []
    visibility: dict[str, list[bool]] = {}
    for view, column in columns.items():
        groups = lump_small_groups(table[column], cfg.max_groups, f"other {COLOR_BY[view]}s")
        grouped = table.groupby(groups, sort=True)
        for value, group in grouped:
            fig.add_trace(
                go.Scattergl(
                    x=group["x"],
                    y=group["y"],
                    mode="markers",
                    name=plotly_text(value),
                    legendgroup=view,
                    visible=view == "cluster",
                    marker={"size": cfg.point_size, "opacity": 0.8}
                    | ({"color": "lightgrey"} if str(value).startswith(OTHER_PREFIX) else {}),
                    customdata=no_rows,
                    hovertemplate=hover,
                )
            )
            trace_rows.append(grouped.indices[value])  # positions in `table`
            for key in columns:
                visibility.setdefault(key, []).append(key == view)
    buttons = [
        {
            "label": f"colour: {COLOR_BY[view]}",
            "method": "update",
            "args": [
                {"visible": visibility[view]},
                {"legend": {"title": {"text": COLOR_BY[view]}}},
            ],
        }
        for view in columns
    ]
    fig.update_layout(
        title={
            "text": f"Hotel photo captions, t-SNE map ({_count(len(table), n_total)})",
            "x": 0.5,
        },
        updatemenus=[
            {"buttons": buttons, "direction": "down", "x": 0, "xanchor": "left", "y": 1.1}
        ],
        legend={"title": {"text": COLOR_BY["cluster"]}},
        template="plotly_white",
        xaxis={"title": "t-SNE 1"},
        yaxis={"title": "t-SNE 2"},
        height=750,
    )
    return fig, [customdata[rows] for rows in trace_rows]


def hover_columns(table: pd.DataFrame) -> np.ndarray:
    """The hover texts of each row (label, hotel, room type, wrapped caption, text), escaped for
    plotly, as an object array of one row per table row."""
    return np.stack(
        [
            table["cluster_label"].map(plotly_text),
            table["hotel_name"].map(plotly_text),
            table["room_type"].map(plotly_text),
            table["caption"].astype(str).map(_wrap),
            table["text"].map(plotly_text),
        ],
        axis=-1,
    )


def write_png_map(table: pd.DataFrame, target: str | Path, max_groups: int = 20) -> None:
    """Two panels, coloured by cluster and by hotel (the study's comparison): see `png_map`."""
    fig = png_map(table, max_groups)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=PNG_DPI, format="png")


PNG_DPI = 110
PNG_WIDTH_IN = 8  # 880 px: fits a page (and `dvc plots show`) with the legends whole


def png_map(table: pd.DataFrame, max_groups: int = 20):
    """The PNG map's figure: the panels stacked (side by side they were 1760 px wide, wider than
    a browser window, and the right legend was cut off), each with its legend below it in two
    columns; the figure grows with the legends' rows, so none is clipped."""
    # A bare Figure (savefig draws it on Agg): no pyplot, whose import alone took 0.3 s, and
    # no global figure registry to close it from.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = (("cluster_label", "by cluster"), ("hotel_name", "by hotel"))
    grouped = [
        lump_small_groups(table[column], max_groups, f"other {title[3:]}s")
        for column, title in panels
    ]
    legend_rows = [-(-groups.nunique() // 2) for groups in grouped]
    # a square-ish map per panel, plus ~0.17 in per legend row (7 pt text)
    heights = [5.6 + 0.17 * rows for rows in legend_rows]
    fig = Figure(figsize=(PNG_WIDTH_IN, sum(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, gridspec_kw={"height_ratios": heights})
    for ax, (_, title), groups in zip(axes, panels, grouped, strict=True):
        named = groups.nunique() - int(groups.astype(str).str.startswith(OTHER_PREFIX).any())
        # tab10's hues are distinct; tab20 pairs similar hues, so only use it when needed.
        cmap = colormaps["tab10" if named <= 10 else "tab20"]
        size = 14 if len(table) <= 2000 else 3  # dense maps need small points
        for i, (value, group) in enumerate(table.groupby(groups, sort=True)):
            lumped = str(value).startswith(OTHER_PREFIX)  # grey, under the named groups
            ax.scatter(
                group["x"],
                group["y"],
                s=size,
                color="lightgrey" if lumped else cmap(i % cmap.N),
                zorder=1 if lumped else 2,
                # `$...$` would be mathtext (or fail to parse and end the stage)
                label=str(value)[:48].replace("$", r"\$"),
            )
        ax.set_title(f"t-SNE of caption features, {title}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(
            fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, frameon=False
        )
    return fig


def lump_small_groups(values: pd.Series, keep: int, other: str) -> pd.Series:
    """`values` as strings, with all but the `keep` most frequent replaced by `other (n)`."""
    values = values.astype(str)
    counts = values.value_counts()
    if len(counts) <= keep:
        return values
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = {value for value, _ in ranked[:keep]}
    label = f"{OTHER_PREFIX}{other} ({len(counts) - keep})"
    return values.where(values.isin(kept), label)


def _count(shown: int, total: int | None) -> str:
    if total is None or total == shown:
        return f"{shown} images"
    return f"a seeded sample of {shown} of {total} images"


def _wrap(text: str, width: int = 80) -> str:
    """`text` for plotly hover: escaped (`plotly_text`), lines of `width` joined by `<br>`."""
    lines: list[str] = []
    line: list[str] = []
    length = 0  # of " ".join(line)
    for word in text.split():
        if line and length + len(word) + 1 > width:
            lines.append(" ".join(line))
            line, length = [word], len(word)
        else:
            length += len(word) + (1 if line else 0)
            line.append(word)
    lines.append(" ".join(line))
    if "<" in text or ">" in text or "&" in text:
        return "<br>".join(map(plotly_text, lines))
    return "<br>".join(lines)  # nothing to escape (plotly_text would return each line as is)
