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
    lines += [
        "",
        finding_sentence(metrics),
        "",
        *finding_tables(metrics),
        *room_type_sources(metrics),
    ]
    lines += [
        "Cluster cards, the photos nearest each cluster's centre (runs with photos): "
        "[cluster_cards.md](cluster_cards.md).",
        "",
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


YARDSTICK_NAMES = {"hotel": "hotel", "chain": "chain (where known)"}


def _yardstick(name: str) -> str:
    if name.startswith("room_type_"):
        return f"room type ({name.removeprefix('room_type_')})"
    return YARDSTICK_NAMES.get(name, name)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(u: dict) -> str:
    if u.get("ami_low") is None:
        return "n/a"
    return f"{u['ami_low']:.3f}-{u['ami_high']:.3f}"


def finding_sentence(metrics: dict) -> str:
    """The finding in one sentence: room type vs hotel by AMI with their intervals, or "not
    distinguishable" when the intervals overlap."""
    uncertainty = metrics.get("uncertainty", {})
    room = f"room_type_{metrics.get('room_type_source', 'captions')}"
    r, h = uncertainty.get(room), uncertainty.get("hotel")
    if r is None or h is None:
        return "Too few labelled documents to compare room types with hotels."
    level = f"{metrics.get('confidence', 0.95):.0%}"

    def part(name: str, key: str) -> str:
        u = uncertainty[key]
        return (
            f"{name} (AMI {_fmt(metrics.get(f'ami_{key}'))}, {level} interval {_interval(u)}; "
            f"chance NMI {_fmt(u.get('nmi_chance'))})"
        )

    room_name = f"room types from {chosen_source(metrics)}"
    if r.get("ami_low") is None or h.get("ami_low") is None:
        return f"Clusters agree with {part(room_name, room)} and with {part('hotels', 'hotel')}."
    if r["ami_low"] > h["ami_high"]:
        return f"Clusters follow **{part(room_name, room)}** more than {part('hotels', 'hotel')}."
    if h["ami_low"] > r["ami_high"]:
        return f"Clusters follow **{part('hotels', 'hotel')}** more than {part(room_name, room)}."
    return (
        f"Agreement with {part(room_name, room)} and with {part('hotels', 'hotel')} is **not "
        f"distinguishable**: the {level} intervals overlap."
    )


def finding_tables(metrics: dict) -> list[str]:
    """Per yardstick: NMI, AMI with its interval, ARI, chance level, seed spread; then hotel
    and chain retrieval against chance."""
    uncertainty = metrics.get("uncertainty", {})
    if not uncertainty:
        return []
    lines = [
        "| yardstick | documents | NMI | AMI | AMI interval | ARI | NMI by chance (99th pct) "
        "| AMI over seeds |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for name, u in uncertainty.items():
        seeds = (
            "n/a"
            if u.get("ami_seed_mean") is None
            else f"{u['ami_seed_mean']:.3f} ± {u['ami_seed_sd']:.3f}"
        )
        lines.append(
            f"| {_yardstick(name)} | {u['n']} | {_fmt(metrics.get(f'nmi_{name}'))} "
            f"| {_fmt(metrics.get(f'ami_{name}'))} | {_interval(u)} "
            f"| {_fmt(metrics.get(f'ari_{name}'))} | {_fmt(u.get('nmi_chance'))} "
            f"({_fmt(u.get('nmi_chance_p99'))}) | {seeds} |"
        )
    rows = metrics.get("uncertainty_rows", metrics["n_docs"])
    sampled = f" (on a seeded sample of {rows})" if rows < metrics["n_docs"] else ""
    lines += [
        "",
        f"Intervals: {metrics.get('n_bootstrap', 0)} half-samples of the documents{sampled}; "
        f"chance: {metrics.get('n_permutations', 0)} permutations of each yardstick; seeds: "
        f"{metrics.get('n_seeds', 0)} reruns of the features and k-means at k = {metrics['k']}.",
        "",
    ]
    other = metrics.get("without_duplicates") or metrics.get("with_duplicates")
    if other:
        which = "without" if "without_duplicates" in metrics else "with"
        room = f"ami_room_type_{metrics.get('room_type_source', 'captions')}"
        lines += [
            f"{which.capitalize()} the duplicates ({other['n_docs']} documents): AMI hotel "
            f"{_fmt(other.get('ami_hotel'))}, room type {_fmt(other.get(room))}.",
            "",
        ]
    retrieval = metrics.get("retrieval", {})
    if retrieval:
        lines += [
            "| retrieval (leave one out, cosine) | queries | top-1 | chance | top-10 | chance |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in retrieval.items():
            lines.append(
                f"| {_yardstick(name)} | {r['queries']} | {r['top1']:.3f} "
                f"| {r['top1_chance']:.3f} | {r['top10']:.3f} | {r['top10_chance']:.3f} |"
            )
        lines.append("")
    return lines
