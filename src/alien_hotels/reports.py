"""Human-readable reports: `reports/clusters.md`. Every value from data goes through
`markdown_cell`, so a hotel or folder name cannot add cells, rows or HTML to the table."""

from __future__ import annotations

import pandas as pd

from alien_hotels.common import markdown_cell


def _mix(series: pd.Series, top: int = 4) -> str:
    shares = series.value_counts(normalize=True).head(top)
    return ", ".join(f"{markdown_cell(name)} {share:.0%}" for name, share in shares.items())


SOURCE_NOTES = {
    "captions": "no: keyword rules on the same captions the clusters are made of",
    "image": "yes: CLIP zero-shot on the photos",
    "folder": "yes: the dataset's room-type folders",
}


def chosen_source(metrics: dict) -> str:
    """The room-type source the scores use, with how few images it labelled when not all."""
    source = metrics.get("room_type_source", "captions")
    labelled = metrics.get(f"n_room_type_{source}")
    if labelled is not None and labelled < metrics["n_docs"]:  # unlabelled rows are not scored
        return f"{source}, {labelled} of {metrics['n_docs']} images labelled"
    return source


def room_type_sources(metrics: dict) -> list[str]:
    """The agreement with each room-type source of the run, side by side."""
    sources = [s for s in SOURCE_NOTES if f"nmi_room_type_{s}" in metrics]
    if not sources:
        return []

    def value(key: str) -> str:
        v = metrics.get(key)
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        "| room types from | NMI | ARI | images labelled | independent of the captions? |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for s in sources:
        chosen = " (used above)" if s == metrics.get("room_type_source") else ""
        labelled = metrics.get(f"n_room_type_{s}", metrics["n_docs"])
        lines.append(
            f"| {s}{chosen} | {value(f'nmi_room_type_{s}')} | {value(f'ari_room_type_{s}')} "
            f"| {labelled} | {SOURCE_NOTES[s]} |"
        )
    if sources == ["captions"]:
        lines += [
            "",
            "Only caption-based room types exist in this run (no usable images or room-type "
            "folders), so the room-type agreement is partly circular: see the README, "
            '"Room types: three sources".',
        ]
    return [*lines, ""]


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
    source = chosen_source(metrics)
    nmi_room = metrics["nmi_room_type"]
    verdict = "room types" if nmi_room is not None and nmi_room > metrics["nmi_hotel"] else "hotels"
    lines += [
        "",
        f"Clusters follow **{verdict}** more than the alternative (by NMI; room types from "
        f"{source}).",
        "",
        *room_type_sources(metrics),
    ]
    lines += [
        "| cluster | size | label | top terms | room types | hotels |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for cluster, group in assigned.groupby("cluster", sort=True):
        c = int(cluster)
        terms = ", ".join(markdown_cell(term) for term in top_terms.get(c, []))
        lines.append(
            f"| {c} | {len(group)} | {markdown_cell(names[c])} | {terms} "
            f"| {_mix(group['room_type'])} | {_mix(group[hotel_col].astype(str), top=3)} |"
        )
    return "\n".join(lines) + "\n"
