"""Human-readable reports: `reports/clusters.md`."""

from __future__ import annotations

import pandas as pd


def _mix(series: pd.Series, top: int = 4) -> str:
    shares = series.value_counts(normalize=True).head(top)
    return ", ".join(f"{name} {share:.0%}" for name, share in shares.items())


def clusters_markdown(
    assigned: pd.DataFrame,
    top_terms: dict[int, list[str]],
    names: dict[int, str],
    metrics: dict,
) -> str:
    """Per cluster: size, label, top c-TF-IDF terms, room-type mix and hotel mix."""
    hotel_col = "hotel_name" if "hotel_name" in assigned else "hotel_id"
    lines = [
        f"# Clusters (k = {metrics['k']}, {metrics['k_source']}; {metrics['n_docs']} captions)",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    for key in ("silhouette", "nmi_room_type", "nmi_hotel", "ari_room_type", "ari_hotel"):
        value = metrics.get(key)
        lines.append(f"| {key} | {'n/a' if value is None else f'{value:.3f}'} |")
    verdict = "room types" if metrics["nmi_room_type"] > metrics["nmi_hotel"] else "hotels"
    lines += ["", f"Clusters follow **{verdict}** more than the alternative (by NMI).", ""]
    lines += [
        "| cluster | size | label | top terms | room types | hotels |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for cluster, group in assigned.groupby("cluster", sort=True):
        c = int(cluster)
        lines.append(
            f"| {c} | {len(group)} | {names[c]} | {', '.join(top_terms.get(c, []))} "
            f"| {_mix(group['room_type'])} | {_mix(group[hotel_col].astype(str), top=3)} |"
        )
    return "\n".join(lines) + "\n"
