"""`alien-hotels exps`: experiments as one compact table, from `dvc exp show --json`.

dvc's own table puts every metric before the params and, too wide for the terminal, hides the
params behind `…`: in 80 columns, every one of them, which are what tell experiments apart. This
table has the experiment, the params that differ between the rows shown and the four cluster
metrics, and shortens its headers (then its gaps, then its cells) until it fits the terminal.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PARAMS_FILE = "params.yaml"
METRICS_FILE = "metrics/clustering.json"
# the pipeline's param sections (`ray` only picks where work runs: never a result's cause)
PARAM_SECTIONS = (
    "data",
    "images",
    "caption",
    "text",
    "room_types",
    "features",
    "cluster",
    "map",
    "edit",
)
# AMI, not NMI: chance-corrected, so runs with another k or feature set compare fairly.
METRICS = ("k", "silhouette", "ami_room_type", "ami_hotel")
SHORT_METRICS = {"silhouette": "silh", "ami_room_type": "ami_room", "ami_hotel": "ami_hotel"}
METRICS_KEY = (
    f"silh: silhouette; ami_room, ami_hotel: AMI of the clusters with room type, hotel "
    f"({METRICS_FILE})"
)
# `dvc exp show` options the JSON output ignores: applied here instead
SORT_OPTIONS = ("--sort-by", "--sort-order")
FLAGS_HERE = ("--hide-workspace",)
MIN_CELL = 6


@dataclass
class Row:
    name: str
    depth: int  # 0: workspace or a baseline commit; 1: an experiment of the baseline above
    last: bool  # the last experiment under its baseline (drawn with └──)
    params: dict[str, object]
    metrics: dict[str, object]


def flatten(tree: object, prefix: str = "") -> dict[str, object]:
    """Nested params as dotted keys; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, object] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _file_data(data: dict, kind: str, path: str) -> dict:
    return ((data.get(kind) or {}).get(path) or {}).get("data") or {}


def _row(entry: dict, depth: int, last: bool) -> Row:
    data = entry.get("data") or {}
    rev = str(entry.get("rev") or "?")
    name = entry.get("name") or (rev if rev == "workspace" else rev[:7])
    if entry.get("error"):
        name += " (failed)"
    params = {
        key: value
        for key, value in flatten(_file_data(data, "params", PARAMS_FILE)).items()
        if key.split(".", 1)[0] in PARAM_SECTIONS
    }
    metrics = _file_data(data, "metrics", METRICS_FILE)
    return Row(name, depth, last, params, {m: metrics.get(m) for m in METRICS})


def rows_from_json(report: Sequence[dict]) -> list[Row]:
    """Workspace and baselines (depth 0), each followed by its experiments (depth 1), in the
    order `dvc exp show --json` gives them. An experiment's latest rev carries its results."""
    rows = []
    for baseline in report:
        rows.append(_row(baseline, 0, False))
        experiments = baseline.get("experiments") or []
        for i, experiment in enumerate(experiments):
            revs = experiment.get("revs") or [{}]
            entry = {**revs[0], "name": experiment.get("name") or revs[0].get("name")}
            rows.append(_row(entry, 1, i == len(experiments) - 1))
    return rows


def changed_params(rows: Sequence[Row]) -> list[str]:
    """Params whose values differ between the rows (absent counts as a value), in file order."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row.params))
    missing = object()
    return [
        key
        for key in keys
        if len({json.dumps(row.params.get(key, missing), default=repr) for row in rows}) > 1
    ]


def cell(value: object) -> str:
    if value is None:
        return "-"  # as dvc shows null
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def short_names(keys: Sequence[str], taken: Iterable[str]) -> list[str]:
    """Each dotted key by its shortest suffix of whole parts that no other key and no name in
    `taken` has (`text.max_words` -> `max_words`; `cluster.k` stays whole next to metric `k`)."""
    taken = set(taken)
    names = []
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            clashes = taken | {".".join(other.split(".")[-n:]) for other in keys if other != key}
            if name not in clashes or n == len(parts):
                break
        names.append(name)
    return names


def _sorted(rows: list[Row], sort_by: str | None, order: str) -> list[Row]:
    """Experiments sorted within their baseline, as dvc sorts them (missing values last)."""
    if not sort_by:
        return rows
    key = sort_by.split(":", 1)[-1]

    def value(row: Row):
        found = row.metrics.get(key, row.params.get(key))
        return found if isinstance(found, int | float) and not isinstance(found, bool) else None

    out: list[Row] = []
    group: list[Row] = []
    for row in [*rows, None]:
        if row is None or row.depth == 0:
            known = sorted(
                (r for r in group if value(r) is not None),
                key=value,
                reverse=order == "desc",
            )
            ordered = known + [r for r in group if value(r) is None]
            for i, r in enumerate(ordered):
                r.last = i == len(ordered) - 1
            out += ordered
            group = []
            if row is not None:
                out.append(row)
        else:
            group.append(row)
    return out


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render(rows: Sequence[Row], width: int) -> str:
    """The table, fitted to `width` columns: full headers; else params by their last key and
    short metric names (with a key line); else one-space gaps; else cells clipped with `…`."""
    params = changed_params(rows)
    names = [("├── " if not r.last else "└── ") + r.name if r.depth else r.name for r in rows]
    param_cells = [[cell(r.params.get(p)) for p in params] for r in rows]
    metric_cells = [[cell(r.metrics.get(m)) for m in METRICS] for r in rows]
    attempts = [
        (list(params), list(METRICS), 2),
        (short_names(params, METRICS), list(METRICS), 2),
        (short_names(params, METRICS), [SHORT_METRICS.get(m, m) for m in METRICS], 2),
        (short_names(params, METRICS), [SHORT_METRICS.get(m, m) for m in METRICS], 1),
    ]
    for headers_p, headers_m, gap in attempts:
        lines = _lines(
            ["Experiment", *headers_p, *headers_m], names, param_cells, metric_cells, gap
        )
        if max(map(len, lines)) <= width:
            break
    else:  # clip the widest cells of the name and params until it fits (metrics stay whole)
        for cap in range(max(map(len, lines)), MIN_CELL - 1, -1):
            clipped_names = [_clip(n, max(cap, 10)) for n in names]
            clipped = [[_clip(c, cap) for c in cells] for cells in param_cells]
            heads = [_clip(h, cap) for h in headers_p]
            lines = _lines(
                ["Experiment", *heads, *headers_m], clipped_names, clipped, metric_cells, 1
            )
            if max(map(len, lines)) <= width:
                break
    if headers_m != list(METRICS):
        lines += textwrap.wrap(METRICS_KEY, width=max(width, 20))
    if not params:
        lines.append("no params differ between these rows")
    return "\n".join(lines) + "\n"


def _lines(
    headers: list[str],
    names: list[str],
    param_cells: list[list[str]],
    metric_cells: list[list[str]],
    gap: int,
) -> list[str]:
    table = [
        headers,
        *([n, *p, *m] for n, p, m in zip(names, param_cells, metric_cells, strict=True)),
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    sep = " " * gap
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append(sep.join(cells).rstrip())
    return lines


def split_args(args: Sequence[str]) -> tuple[list[str], str | None, str, bool]:
    """(options for `dvc exp show --json`, --sort-by, --sort-order, --hide-workspace): the ones
    the JSON output ignores are taken out and applied here."""
    rest: list[str] = []
    sort_by, order, hide_workspace = None, "asc", False
    items = iter(args)
    for arg in items:
        option, eq, value = arg.partition("=")
        if option in SORT_OPTIONS:
            value = value if eq else next(items, "")
            if option == "--sort-by":
                sort_by = value
            else:
                order = value
        elif arg in FLAGS_HERE:
            hide_workspace = True
        else:
            rest.append(arg)
    return rest, sort_by, order, hide_workspace


def table(report: Sequence[dict], width: int, args: Sequence[str] = ()) -> str:
    _, sort_by, order, hide_workspace = split_args(args)
    rows = rows_from_json(report)
    if hide_workspace:
        rows = [r for r in rows if not (r.depth == 0 and r.name == "workspace")]
    return render(_sorted(rows, sort_by, order), width)
