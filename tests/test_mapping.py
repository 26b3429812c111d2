import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import make_blobs

from alien_hotels import mapping
from alien_hotels.common import StageError
from conftest import compose


@pytest.fixture(scope="module")
def table():
    X, y = make_blobs(n_samples=120, centers=3, n_features=10, random_state=1)
    coords = mapping.embed_2d(X, compose().map.updated(perplexity=10, n_iter=100))
    return (
        X,
        y,
        pd.DataFrame(
            {
                "x": coords[:, 0],
                "y": coords[:, 1],
                "cluster_label": [f"c{v}" for v in y],
                "hotel_name": [f"Hotel {i % 4}" for i in range(len(y))],
                "room_type": np.array(["bathroom", "bedroom", "pool"])[y],
                "caption": ["a caption, with flavor"] * len(y),
                "text": ["a caption with flavor"] * len(y),
            }
        ),
    )


def test_tsne_keeps_blobs_apart(table):
    _, y, frame = table
    coords = frame[["x", "y"]].to_numpy()
    centroids = np.stack([coords[y == c].mean(axis=0) for c in range(3)])
    spread = max(np.linalg.norm(coords[y == c] - centroids[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(centroids[a] - centroids[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 2 * spread


def test_tsne_is_seeded():
    X, _ = make_blobs(n_samples=60, centers=2, n_features=5, random_state=2)
    cfg = compose().map.updated(perplexity=5, n_iter=60)
    np.testing.assert_allclose(mapping.embed_2d(X, cfg), mapping.embed_2d(X, cfg))


def test_sklearn_method_runs():
    X, _ = make_blobs(n_samples=40, centers=2, n_features=5, random_state=2)
    coords = mapping.embed_2d(X, compose().map.updated(method="sklearn", perplexity=5, n_iter=250))
    assert coords.shape == (40, 2)


def test_perplexity_too_large_is_lowered_with_a_warning(caplog):
    X = np.random.default_rng(0).normal(size=(50, 4))
    with caplog.at_level("WARNING"):
        coords = mapping.embed_2d(X, compose().map.updated(n_iter=100))
    assert coords.shape == (50, 2) and np.isfinite(coords).all()
    assert "map.perplexity=30 is too large for 50 documents" in caplog.text
    assert mapping.perplexity_for(50, compose().map) == pytest.approx(49 / 3)
    assert mapping.perplexity_for(91, compose().map) == 30
    with pytest.raises(StageError, match="at least 2 documents"):
        mapping.embed_2d(X[:1], compose().map)


def test_html_map_is_self_contained_with_colour_switch(table, tmp_path):
    _, _, frame = table
    target = tmp_path / "map.html"
    mapping.write_html_map(frame, target, compose().map)
    html = target.read_text()
    assert '<script src="https://cdn.plot.ly' not in html and len(html) > 1_000_000
    for label in ("colour: cluster label", "colour: hotel", "colour: room type"):
        assert label in html
    assert "Hotel 3" in html and "bathroom" in html and "a caption, with flavor" in html


def test_png_map(table, tmp_path):
    _, _, frame = table
    target = tmp_path / "map.png"
    mapping.write_png_map(frame, target)
    with Image.open(target) as image:
        # fits a page (side by side it was 1760 px, wider than a browser window): panels stacked
        assert image.format == "PNG" and 600 <= image.width <= 1000 < image.height


def test_png_map_stacks_panels_with_whole_legends(table):
    """Each panel's legend (21 entries: 20 hotels and the lumped rest) lies inside the figure,
    below its own map; the cluster panel is above the hotel panel."""
    _, _, frame = table
    many = frame.assign(hotel_name=[f"Hotel number {i % 30} with a long name" for i in range(120)])
    fig = mapping.png_map(many, max_groups=20)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        page = fig.bbox
        top, bottom = fig.axes
        assert top.get_window_extent().y0 > bottom.get_window_extent().y1  # stacked
        for ax in (top, bottom):
            legend = ax.get_legend()
            box = legend.get_window_extent(renderer)
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0, (box, page)
            assert box.y1 <= ax.get_window_extent().y0  # below its map, not over it
        labels = [t.get_text() for t in bottom.get_legend().get_texts()]
        assert len(labels) == 21 and labels[-1] == "~ other hotels (10)"
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def stage_inputs(root, n: int = 1100):
    """features.npz, cluster labels and texts for the map stage: blobs on the features' grid,
    with duplicated rows (ties in every neighbour search, as identical captions give)."""
    from alien_hotels import features
    from alien_hotels.stages.paths import StagePaths

    X, y = make_blobs(n_samples=n, centers=4, n_features=12, random_state=3)
    X[n - 100 :] = X[:100]  # duplicates
    paths = StagePaths().under(root)
    paths.features.parent.mkdir(parents=True)
    features.save_features(paths.features, features.on_grid(X / 10), 1000 + np.arange(n))
    labels = pd.DataFrame(
        {
            "image_id": 1000 + np.arange(n),
            "hotel_id": np.arange(n) % 7,
            "room_type": np.array(["bathroom", "bedroom", "pool", "lobby"])[y],
            "cluster": y,
            "cluster_label": [f"cluster <{v}>" for v in y],
        }
    )
    labels.to_csv(paths.labels, index=False)
    texts = labels[["image_id"]].assign(
        text="bed lamp", caption="a bed, with a lamp & <b>x</b>", hotel_name="Inn & Suites"
    )
    texts.to_csv(paths.texts, index=False)
    return paths


@pytest.mark.parametrize("gradient", ["bh", "fft"])
def test_map_stage_writes_the_same_bytes_on_any_number_of_threads(tmp_path, gradient):
    """The same params give the same map with 1 or 2 threads: the neighbour index (Annoy, from
    1,000 fitted rows) is built on one thread, and openTSNE's gradients give the same bits on
    any number; the other rows are placed and the plots drawn from those coordinates."""
    from alien_hotels.stages import map as map_stage

    outputs = {}
    for n_jobs in (1, 2):
        root = tmp_path / f"threads_{n_jobs}"
        paths = stage_inputs(root)
        cfg = compose().map.updated(
            fit_sample=1000, n_iter=50, n_jobs=n_jobs, gradient=gradient, max_plot_points=500
        )
        map_stage.run(compose().model_copy(update={"map": cfg}), paths)
        files = [paths.clusters, paths.map_html, paths.map_png, root / "metrics/map.json"]
        outputs[n_jobs] = {path.relative_to(root): path.read_bytes() for path in files}
    assert outputs[1].keys() == outputs[2].keys()
    for name in outputs[1]:
        assert outputs[1][name] == outputs[2][name], name
    metrics = json.loads(outputs[1][Path("metrics/map.json")])
    assert metrics["fit_rows"] == 1000 and 0.9 < metrics["trustworthiness"] <= 1


def test_n_jobs_null_means_the_available_cores():
    from alien_hotels.common import available_cores

    cfg = compose().map.updated(n_jobs=None)
    assert cfg.n_jobs is None and cfg.threads == available_cores()
    assert compose().map.updated(n_jobs=3).threads == 3


def test_html_map_is_what_plotly_writes_from_the_validated_figure(table):
    """The hover arrays skip plotly's validation and deep copies (`with_hover_data`); the page
    is byte for byte the one plotly writes when the traces get them the usual way."""
    import plotly.io as pio

    _, _, frame = table
    frame = frame.assign(
        caption=[f"caption {i} <a href='x'>&amp; {'word ' * (i % 30)}" for i in range(len(frame))],
        hotel_name=[f"Hotel {i % 25} & <b>Co</b>" for i in range(len(frame))],
    ).iloc[::-1]  # not in index order
    cfg = compose().map.updated(max_groups=20)
    fig, hover_rows = mapping.html_map_figure(frame, cfg, n_total=500)
    fast = pio.to_html(
        mapping.with_hover_data(fig, hover_rows), include_plotlyjs=False, div_id="m", validate=False
    )
    for trace, rows in zip(fig.data, hover_rows, strict=True):
        trace.customdata = rows
    assert fast == pio.to_html(fig, include_plotlyjs=False, div_id="m")
    assert "Hotel 3 & &lt;b&gt;Co" in fast and "<a href" not in fast


def test_trustworthiness_of_the_fitted_rows(table):
    X, _, frame = table
    coords = frame[["x", "y"]].to_numpy()
    good = mapping.trustworthiness(X, coords, None, random_state=0)
    shuffled = mapping.trustworthiness(X, coords[::-1], None, random_state=0)
    assert 0.9 < good <= 1 and shuffled < good - 0.2
    rows = np.arange(0, 120, 2)
    assert mapping.trustworthiness(X, coords, rows, 0) != good  # the fitted rows only
    assert mapping.trustworthiness(X[:2], coords[:2], None, 0) is None


def test_trustworthiness_is_measured_on_a_seeded_sample_of_many_rows(monkeypatch, table):
    X, _, frame = table
    coords = frame[["x", "y"]].to_numpy()
    monkeypatch.setattr(mapping, "TRUSTWORTHINESS_ROWS", 50)
    first = mapping.trustworthiness(X, coords, None, random_state=1)
    assert first == mapping.trustworthiness(X, coords, None, random_state=1)
    assert first != mapping.trustworthiness(X, coords, None, random_state=2)
