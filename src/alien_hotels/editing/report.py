"""Summaries people read: per-recipe means, the hotel ranking for alien guests, the sweep plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from alien_hotels.common import atomic_path, markdown_cell


def clean(value: Any) -> Any:
    """NaN -> None recursively, so metrics files stay valid JSON."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def hotel_ranking(tables: dict[str, pd.DataFrame], sample: pd.DataFrame) -> pd.DataFrame:
    """Per hotel: mean alien-friendliness of its source photos and after each recipe.

    Sorted best first; the source score is the one that ranks hotels as they are.
    """
    meta = sample[["image_id", "hotel_id"]].copy()
    meta["image_id"] = meta["image_id"].astype(str)
    meta["hotel_name"] = sample["hotel_name"] if "hotel_name" in sample else meta["hotel_id"]
    scored = [t[t["status"] != "failed"] for t in tables.values() if not t.empty]
    columns = ["rank", "hotel_id", "hotel_name", "n_images", "alien_score", *tables]
    if not scored:
        return pd.DataFrame(columns=columns)
    originals = pd.concat([t[["image_id", "alien_score_before"]] for t in scored])
    originals = originals.drop_duplicates("image_id").astype({"image_id": str})
    frame = originals.merge(meta, on="image_id", how="inner")
    for name, table in tables.items():
        if table.empty:
            frame[name] = float("nan")
            continue
        after = table[["image_id", "alien_score_after"]].astype({"image_id": str})
        frame = frame.merge(after.rename(columns={"alien_score_after": name}), "left", "image_id")
    grouped = frame.groupby(["hotel_id", "hotel_name"], dropna=False)
    ranking = grouped.agg(
        n_images=("image_id", "size"),
        alien_score=("alien_score_before", "mean"),
        **{name: (name, "mean") for name in tables},
    ).reset_index()
    ranking = ranking.sort_values("alien_score", ascending=False, kind="stable")
    ranking.insert(0, "rank", range(1, len(ranking) + 1))
    return ranking.reindex(columns=columns).reset_index(drop=True)


def ranking_markdown(ranking: pd.DataFrame, per_recipe: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Hotels ranked for alien guests",
        "",
        "Alien-friendliness (0-1) is the weighted mean of the green, neon, towel-free and CLIP "
        "preference components available (docs/editing.md). `alien_score` scores the hotel's "
        "photos as they are; each recipe column scores them after that edit.",
        "",
    ]
    if ranking.empty:
        lines += ["No images were edited (the images manifest has no status=ok rows).", ""]
    else:
        cols = list(ranking.columns)
        lines += ["| " + " | ".join(map(markdown_cell, cols)) + " |", "|" + "---|" * len(cols)]
        for row in ranking.itertuples(index=False):
            cells = [markdown_cell(f"{v:.3f}" if isinstance(v, float) else v) for v in row]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Recipes",
        "",
        "| recipe | images | edited | unchanged | failed | SSIM | "
        "alien before | alien after | success |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in per_recipe.items():

        def f(key: str, m: dict[str, Any] = m) -> str:
            value = m.get(key)
            return "-" if value is None else f"{value:.3f}"

        lines.append(
            f"| {markdown_cell(name)} | {m['n_images']} | {m['n_edited']} | {m['n_unchanged']} | "
            f"{m['n_failed']} | {f('ssim')} | {f('alien_score_before')} | "
            f"{f('alien_score_after')} | {f('success')} |"
        )
    return "\n".join(lines) + "\n"


def tradeoff_plot(table: pd.DataFrame, target: Path, recipe: str) -> None:
    """Preservation (SSIM) against edit success, one point per grid setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = [
        c
        for c in table.columns
        if c
        not in {
            "n_images",
            "ssim",
            "clip_similarity",
            "success",
            "alien_score_after",
            "mask_fraction",
        }
    ]
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    if table.empty:
        ax.text(0.5, 0.5, "no images to sweep", ha="center", va="center")
    else:
        success = pd.to_numeric(table["success"], errors="coerce").fillna(0.0)
        ax.scatter(table["ssim"], success, c=range(len(table)), cmap="viridis")
        for row, y in zip(table.itertuples(index=False), success, strict=True):
            label = ", ".join(f"{f}={getattr(row, f):g}" for f in fields)
            ax.annotate(label, (row.ssim, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("content preservation (SSIM to the source)")
    ax.set_ylabel("edit success (goal score after - before)")
    ax.set_title(f"{recipe}: preservation vs. edit strength")
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=target.suffix.lstrip(".") or "png")
    plt.close(fig)
