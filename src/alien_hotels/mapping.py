"""Stage 6, `map`: t-SNE of the SVD features, drawn as an interactive HTML map and a PNG.

The study drew `TSNE(perplexity=30, n_iter=300)` with bokeh. openTSNE's FFT-accelerated
gradients keep this fast at Hotels-50K scale; scikit-learn's exact recipe stays selectable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from alien_hotels.common import Section, StageError, atomic_path

COLOR_BY = {"cluster": "cluster label", "hotel": "hotel", "room_type": "room type"}


class MapConfig(Section):
    """`map.*`: t-SNE settings and how the map is drawn."""

    method: Literal["opentsne", "sklearn"] = "opentsne"
    perplexity: float = Field(30.0, gt=0)
    n_iter: int = Field(500, ge=50)
    random_state: int = 42
    n_jobs: int = Field(1, ge=1)
    point_size: int = Field(8, ge=1)


def embed_2d(embedding: np.ndarray, cfg: MapConfig) -> np.ndarray:
    """2-D t-SNE coordinates for each row of `embedding`."""
    n_docs = len(embedding)
    if n_docs < 4:
        raise StageError(f"map: t-SNE needs at least 4 documents, got {n_docs}")
    if 3 * cfg.perplexity >= n_docs:
        raise StageError(
            f"map.perplexity={cfg.perplexity} is too large for {n_docs} documents: "
            f"t-SNE needs 3 * perplexity < number of documents"
        )
    data = np.asarray(embedding, dtype=np.float64)
    if cfg.method == "sklearn":
        from sklearn.manifold import TSNE

        tsne = TSNE(
            n_components=2,
            perplexity=cfg.perplexity,
            max_iter=cfg.n_iter,
            random_state=cfg.random_state,
            init="pca",
        )
        return tsne.fit_transform(data).astype(np.float32)
    from openTSNE import TSNE as OpenTSNE

    tsne = OpenTSNE(
        n_components=2,
        perplexity=cfg.perplexity,
        n_iter=cfg.n_iter,
        random_state=cfg.random_state,
        n_jobs=cfg.n_jobs,
        verbose=False,
    )
    return np.asarray(tsne.fit(data), dtype=np.float32)


def write_html_map(table: pd.DataFrame, target: str | Path, cfg: MapConfig) -> None:
    """Self-contained plotly map; a dropdown switches colour by cluster, hotel or room type.

    `table` needs columns x, y, cluster_label, hotel_name, room_type, caption, text.
    """
    import plotly.graph_objects as go

    hover = (
        "<b>%{customdata[0]}</b><br>hotel: %{customdata[1]}<br>room type: %{customdata[2]}"
        "<br>caption: %{customdata[3]}<br>text: %{customdata[4]}<extra></extra>"
    )
    columns = {"cluster": "cluster_label", "hotel": "hotel_name", "room_type": "room_type"}
    fig = go.Figure()
    visibility: dict[str, list[bool]] = {}
    for view, column in columns.items():
        for value, group in table.groupby(column, sort=True):
            fig.add_trace(
                go.Scattergl(
                    x=group["x"],
                    y=group["y"],
                    mode="markers",
                    name=str(value),
                    legendgroup=view,
                    visible=view == "cluster",
                    marker={"size": cfg.point_size, "opacity": 0.8},
                    customdata=np.stack(
                        [
                            group["cluster_label"].astype(str),
                            group["hotel_name"].astype(str),
                            group["room_type"].astype(str),
                            group["caption"].astype(str).map(_wrap),
                            group["text"].astype(str),
                        ],
                        axis=-1,
                    ),
                    hovertemplate=hover,
                )
            )
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
        title={"text": f"Hotel photo captions, t-SNE map ({len(table)} images)", "x": 0.5},
        updatemenus=[
            {"buttons": buttons, "direction": "down", "x": 0, "xanchor": "left", "y": 1.1}
        ],
        legend={"title": {"text": COLOR_BY["cluster"]}},
        template="plotly_white",
        xaxis={"title": "t-SNE 1"},
        yaxis={"title": "t-SNE 2"},
        height=750,
    )
    with atomic_path(target) as tmp:
        # A fixed div id keeps the file byte-identical across runs (DVC compares hashes).
        fig.write_html(tmp, include_plotlyjs=True, full_html=True, div_id="cluster-map")


def write_png_map(table: pd.DataFrame, target: str | Path) -> None:
    """Two panels side by side: coloured by cluster and by hotel, the study's comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(16, 7.5), constrained_layout=True)
    for ax, column, title in (
        (axes[0], "cluster_label", "by cluster"),
        (axes[1], "hotel_name", "by hotel"),
    ):
        groups = list(table.groupby(column, sort=True))
        # tab10's hues are distinct; tab20 pairs similar hues, so only use it when needed.
        cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
        for i, (value, group) in enumerate(groups):
            color = cmap(i % cmap.N)
            ax.scatter(group["x"], group["y"], s=14, color=color, label=str(value)[:48])
        ax.set_title(f"t-SNE of caption features, {title}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.02), ncol=2, frameon=False)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _wrap(text: str, width: int = 80) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "<br>".join(lines)
