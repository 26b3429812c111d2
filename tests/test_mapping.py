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
