"""Small pieces every stage shares: the strict config base class, atomic output writers, and
the escaping of values from data for the pages, reports and spreadsheets people open.

Outputs are written to a temporary file next to the target and renamed into place, so a stage
that fails half-way leaves no partial output behind (DVC would otherwise cache or compare it).
A process killed mid-write (SIGKILL, power loss) cannot clean up: its `.<name>.<random>.tmp`
is removed by the next write of the same target, and stages that write a folder of outputs
call `remove_partial_writes` on it when they start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Self, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)
T = TypeVar("T")

# Columns that hold names or free text: read as strings, only an empty cell is missing. A photo
# folder named `NA`, `None` or `101` stays that name (pandas' defaults read NaN and 101.0).
TEXT_COLUMNS = ("hotel_name", "room_type_folder", "image_path", "caption", "text", "room_type")
# The other columns keep pandas' own missing values (`read_csv(keep_default_na=True)`; the list
# its docs give, which `keep_default_na=False` turns off for every column at once).
PANDAS_NA_VALUES = (
    *("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"),
    *("<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"),
)

# What `atomic_path` names its temporary files: mkstemp's `.<target name>.<8 random>.tmp`.
PARTIAL_WRITE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")

# Every seed and random_state of every section: numpy's legacy RandomState and scikit-learn accept
# only 0..2**32-1 and fail deep inside a stage on anything else, so the config rejects it first.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are immutable.

    Sections validate (types, ranges, choices, cross-field rules) but hold no default values:
    every value comes from `conf/` (composed into `params.yaml`), the one source of defaults, so
    a missing key is an error rather than a silent second default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def updated(self, **changes: Any) -> Self:
        """A validated copy with `changes` applied (pydantic's `model_copy` skips validation)."""
        return self.model_validate({**self.model_dump(), **changes})


class StageError(RuntimeError):
    """A stage cannot run on the given inputs; the message says which input and why."""


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path that replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(target.parent, target_name=target.name)
    tmp_path = _new_temporary(target)
    try:
        yield tmp_path
        tmp_path.replace(target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _new_temporary(target: Path) -> Path:
    """A new empty `.<name>.<8 random>.tmp` next to `target` (the `PARTIAL_WRITE` pattern),
    created with mode 0666 less the umask, as outputs should be. (mkstemp makes 0600 files, and
    reading the umask means setting it, which races with other threads creating files.)"""
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name next to {target}")


def remove_partial_writes(
    directory: str | Path, *, target_name: str | None = None, recursive: bool = False
) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in `directory` (of the one
    target `target_name` only, if given; in subfolders too if `recursive`); return them.

    Call it only where no other process is writing the same outputs (a stage owns its outputs
    while it runs).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    candidates = directory.rglob(".*.tmp") if recursive else directory.glob(".*.tmp")
    removed = []
    for path in candidates:
        match = PARTIAL_WRITE.match(path.name)
        if match and path.is_file() and target_name in (None, match["target"]):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed and target_name is None:
        log.info("removed %d leftover(s) of interrupted writes in %s", len(removed), directory)
    return removed


def write_atomic(target: str | Path, writer: Callable[[Path], Any]) -> None:
    with atomic_path(target) as tmp:
        writer(tmp)


def write_csv(df: pd.DataFrame, target: str | Path) -> None:
    """`df` as CSV (no index), every value in pandas' own text; written by pyarrow, ~20x faster
    than `DataFrame.to_csv` (0.45 s for 100k captions). Arrow quotes every text cell and name."""
    import pyarrow.csv

    table = csv_table(df)
    write_atomic(
        target,
        lambda tmp: pyarrow.csv.write_csv(
            table, tmp, pyarrow.csv.WriteOptions(quoting_style="needed")
        ),
    )


def csv_table(df: pd.DataFrame):
    """`df` as a pyarrow table of what `to_csv` writes: integers and strings as themselves,
    floats in numpy's shortest repr (`100.0`, where arrow writes `100` and a whole-number float
    column would read back as integers), anything else as `str(value)`; missing values empty.
    A one-column table writes a missing value as `""`, as `to_csv` does: an empty line would
    be skipped by readers, and the row lost."""
    import pyarrow as pa

    single = len(df.columns) == 1
    arrays = []
    for _, column in df.items():
        kind = column.dtype.kind
        missing = column.isna().to_numpy(dtype=bool)
        as_is = kind in "iu" or isinstance(column.dtype, pd.StringDtype)
        if as_is and not (single and missing.any()):
            arrays.append(pa.array(column, from_pandas=True))
            continue
        if kind == "f":
            values = column.to_numpy(dtype=getattr(column.dtype, "numpy_dtype", column.dtype))
            text = values.astype(str).astype(object)
        else:
            text = np.array([str(value) for value in column.to_numpy(dtype=object)], dtype=object)
        text[missing] = "" if single else None
        arrays.append(pa.array(text, type=pa.string()))
    return pa.Table.from_arrays(arrays, names=[str(name) for name in df.columns])


def write_json(obj: Any, target: str | Path) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_text(text: str, target: str | Path) -> None:
    write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_csv(
    path: str | Path, required: list[str], what: str, usecols: list[str] | None = None
) -> pd.DataFrame:
    """Read a CSV and fail with a clear message if it is missing, empty or lacks columns.

    `usecols`: parse only these columns (those present) and the required ones; much faster on
    wide tables of a million rows. None: every column.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{what} not found: {path}")
    wanted = None if usecols is None else {*required, *usecols}
    try:
        header = pd.read_csv(path, nrows=0).columns
        columns = None if wanted is None else [col for col in header if col in wanted]
        na_values = {col: [""] if col in TEXT_COLUMNS else PANDAS_NA_VALUES for col in header}
        df = pd.read_csv(path, usecols=columns, keep_default_na=False, na_values=na_values)
        # Text columns by inference, which keeps a text column's cells as written and costs a
        # sixth of `dtype=str` (0.15 s for 100k captions); read again as text only where every
        # cell looked like a number or a boolean (a folder named `101`, `007` or `True`).
        retyped = [
            col
            for col in df.columns
            if col in TEXT_COLUMNS and not isinstance(df[col].dtype, pd.StringDtype)
        ]
        if retyped:
            text = pd.read_csv(
                path,
                usecols=retyped,
                keep_default_na=False,
                na_values={col: [""] for col in retyped},
                dtype={col: "str" for col in retyped},
            )
            df[retyped] = text[retyped]
    except pd.errors.EmptyDataError:
        raise StageError(f"{what} is empty: {path}") from None
    return require_columns(df, required, what, path)


def require_columns(
    df: pd.DataFrame, required: Sequence[str], what: str, path: object
) -> pd.DataFrame:
    """`df`, or a `StageError` naming the columns it lacks and the ones it has."""
    missing = [col for col in required if col not in df.columns]
    if missing:
        raise StageError(
            f"{what} {path} lacks column(s) {', '.join(missing)}; "
            f"it has: {', '.join(map(str, df.columns))}"
        )
    return df


def seeded_rows(n: int, size: int | None, random_state: int) -> np.ndarray | None:
    """Sorted indices of a seeded sample of `size` of `n` rows; None when all rows fit."""
    if size is None or n <= size:
        return None
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=size, replace=False))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def rounded(obj: Any, digits: int = 4) -> Any:
    """Floats in `obj` (nested dicts and lists) rounded to `digits` significant digits.

    Reported metrics carry the precision that is meaningful, not float32 summation noise: the
    last digits of an inertia or a silhouette differ between BLAS builds and thread counts, and
    tracked metrics files must not change when a fresh clone reruns the pipeline elsewhere.
    """
    if isinstance(obj, dict):
        return {key: rounded(value, digits) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(value, digits) for value in obj]
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if value == 0 or not np.isfinite(value) else float(f"{value:.{digits}g}")
    return obj


# Values from data (hotel and folder names, captions) escaped for where they land. Each rule
# changes only what the destination would read as markup, so ordinary names stay as they are.

# A spreadsheet reads a cell starting with one of these as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# `&` starts a character reference only as `&name;`, `&#123;` or `&#x1F;` (HTML, CommonMark,
# plotly); a lone `&` ("Inn & Suites") is plain text everywhere.
CHARACTER_REFERENCE = re.compile(r"&(?=#?[0-9A-Za-z]+;)")
# Tabs and line breaks (a cell is one line), then C0/C1 controls (NUL, ESC, ...) and the bidi
# overrides and isolates that reorder how the text around them displays (U+202A-E, U+2066-9).
LINE_BREAKS = re.compile(r"[\t\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+")
CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
MARKDOWN_SPECIAL = re.compile(r"([\\|`\[\]])")


def markdown_cell(value: Any) -> str:
    """`value` as the text of one Markdown table cell, shown literally by CommonMark/GFM.

    One line (line breaks become spaces, other control characters go); `|` cannot add a cell,
    backticks, brackets and backslashes make no code span, link or image, and `<`, `>` and the
    `&` of a character reference (`&lt;`) become entities, so no tag or entity reaches the page.
    """
    text = CONTROLS.sub("", LINE_BREAKS.sub(" ", str(value)))
    text = CHARACTER_REFERENCE.sub("&amp;", text).replace("<", "&lt;").replace(">", "&gt;")
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)


def plotly_text(value: Any) -> str:
    """`value` for a plotly text field (names, hover, titles): plotly draws a subset of HTML
    there (`<a href>`, `style=`, `<b>`), so `<`, `>` and character references become entities,
    which plotly shows as the characters themselves."""
    text = CHARACTER_REFERENCE.sub("&amp;", str(value))
    return text.replace("<", "&lt;").replace(">", "&gt;")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula, prefixed with `'` (OWASP's rule); other
    values (numbers, missing, ordinary text) unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


# `dvc plots` puts the CSV's values into a <script> without escaping `</`; single angle
# quotation marks read like `<` and `>` in a plot and end no script.
PLOT_LOOKALIKES = str.maketrans({"<": "\u2039", ">": "\u203a"})


def write_report_csv(df: pd.DataFrame, target: str | Path, *, plotted: bool = False) -> None:
    """Write a CSV meant for people (reports, `plots/*.csv`, `data/processed/clusters.csv`).

    Text cells that a spreadsheet would read as a formula get a leading `'`; numeric columns are
    untouched (-1.5 stays a number). `plotted`: a `dvc plots` data file, whose text cells also
    get `‹ ›` for `< >` (DVC embeds them in the page unescaped). The pipeline's hand-off CSVs,
    read back by later stages, use `write_csv`: exact values.
    """
    text_columns = df.select_dtypes(include=["object", "string"]).columns
    safe = df.copy()
    for column in text_columns:
        safe[column] = report_cells(safe[column], plotted=plotted)
    write_csv(safe, target)


def report_cells(cells: pd.Series, *, plotted: bool = False) -> pd.Series:
    """`spreadsheet_safe` (and for `plotted`, `PLOT_LOOKALIKES`) over a column, vectorised: the
    `.str` methods give NaN for a cell that is not text, which keeps its value."""
    if plotted:
        translated = cells.str.translate(PLOT_LOOKALIKES)
        cells = translated.where(translated.notna(), cells)
    starts = cells.str.startswith(FORMULA_STARTS).to_numpy(dtype=object, na_value=False)
    formula = starts.astype(bool)
    if not formula.any():
        return cells
    cells = cells.astype(object)
    cells[formula] = "'" + cells[formula].astype(str)
    return cells


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask (`taskset`, a container's cpuset), capped
    by a CFS CPU quota of its cgroup (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` /
    `cpu.cfs_period_us`; a quota of 1.5 cores counts as 2, as loky and the JVM count it); at
    least 1. `n_jobs: null` in the params means this many threads."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, -int(-quota // 1))  # ceil
    return max(1, cores)


def _cgroup_cpu_quota(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The smallest CFS quota, in cores, of this process's cgroup and its ancestors (v2) or of
    its `cpu` controller group (v1); None when there is none (or no cgroup file system)."""
    try:
        lines = membership.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    v2_path, v1_path = "/", "/"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2_path = path or "/"
        elif "cpu" in controllers.split(","):
            v1_path = path or "/"
    limits: list[float] = []

    def ancestors(base: Path, path: str):
        parts = [p for p in path.strip("/").split("/") if p]
        return [base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]

    for folder in ancestors(root, v2_path):  # v2: "max 100000" or "150000 100000"
        try:
            quota, period = (folder / "cpu.max").read_text(encoding="ascii").split()[:2]
            if quota != "max" and int(period) > 0:
                limits.append(int(quota) / int(period))
        except (OSError, ValueError):
            continue
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):  # v1: quota -1 means none
        for folder in ancestors(root / mount, v1_path):
            try:
                quota = int((folder / "cpu.cfs_quota_us").read_text(encoding="ascii"))
                period = int((folder / "cpu.cfs_period_us").read_text(encoding="ascii"))
            except (OSError, ValueError):
                continue
            if quota > 0 and period > 0:
                limits.append(quota / period)
    return min(limits) if limits else None


def beside(fn: Callable[..., T], *args: Any, n_jobs: int | None) -> Future[T]:
    """`fn(*args)` on a thread of its own when `n_jobs` (null: the cores available) allows two,
    so it overlaps the caller's single-threaded work (plots, CSV, Python loops); at once, on
    the caller's thread, otherwise. `.result()` gives its value or raises its error.

    Only for work whose result does not depend on the thread count. `threadpool_limits` are
    process-wide: where `fn` sets them, the caller sets none of its own until `.result()`."""
    if resolve_n_jobs(n_jobs) < 2:
        done: Future[T] = Future()
        try:
            done.set_result(fn(*args))
        except Exception as exc:  # raised at .result(), as from the thread
            done.set_exception(exc)
        return done
    pool = ThreadPoolExecutor(1, thread_name_prefix=getattr(fn, "__name__", "beside"))
    try:
        return pool.submit(fn, *args)
    finally:
        pool.shutdown(wait=False)  # the thread ends with its task


def resolve_n_jobs(value: int | None) -> int:
    """Threads for an `n_jobs` param: the number given, or `available_cores()` for None."""
    if value is None:
        return available_cores()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"n_jobs must be a positive integer or None, got {value!r}")
    return value
