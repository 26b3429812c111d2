"""Hostile names in the pages and spreadsheets the project writes (issue 23, rows 3 to 6).

The real stages run on the bundled sample with its hotels renamed to payloads (a script that
sets the title, an element, `<img onerror>`, a link, a style, a formula, a `|`/newline/NUL
name) and the caption rules' default room type set to one. Then each page people open is loaded
in headless Chromium with the network refused: `dvc plots show` with the project's template, the
plotly map (every view of its dropdown, with hover labels), and `reports/*.md` rendered as
CommonMark. No script may run (the title stays), and no injected element, link or style may
exist in the DOM (`--dump-dom`). CSVs for people neutralise formulas; hand-off CSVs do not.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from alien_hotels.common import read_csv, write_csv
from conftest import ROOT, compose, run
from test_plots_browser import Browser, chromium_binary

BUNDLED = ROOT / "data/bundled/hotels_sample.csv"
TEMPLATE = ROOT / ".dvc/plots/offline.html"

SCRIPT = "</script><script>document.title='PWNED'</script>"
# unquoted ids: in DVC's JSON a `"` is `\"`, which would become part of the attribute's value
ELEMENT = "</script><div id=injected>live</div><script>"
IMG = "<img src=x id=injected onerror=\"document.title='PWNED'\">"
LINK = '<a href="http://evil.invalid/" target="_top">click</a>'
STYLE = '<span style="font-size:90px;fill:red">big</span>'
FORMULA = '=HYPERLINK("http://evil.invalid/","prize")'
MINUS = "-2+3 Hotel"
BREAKS = "pipe | cell\n| new row | \x00nul`code`"
HOSTILE_HOTELS = [SCRIPT, ELEMENT, IMG, LINK, STYLE, FORMULA, MINUS, BREAKS]
# the captions' default room type ("other"): reaches room-type mixes, the map's room-type view
HOSTILE_ROOM_TYPE = '<a href="http://evil.invalid/room">other</a> | room'


class Dom(HTMLParser):
    """The elements of a serialised DOM (script text is data, not elements) and its title."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.title, self._in_title = "", False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def injected(html: str) -> list[str]:
    """What a payload left in the DOM: an element it made, a link off the page, an event
    handler or a style it set. (A name in text or in an `aria-label` is only text.)"""
    found = []
    for tag, attrs in Dom(html).elements:
        for name, value in attrs.items():
            if (
                (name == "id" and value == "injected")
                or name.startswith("on")
                or (name in ("href", "xlink:href", "src") and "evil.invalid" in value)
                or (name == "style" and "90px" in value)
            ):
                found.append(f"<{tag} {name}={value!r}>")
    return found


def dump_dom(page: Path, workdir: Path) -> str:
    """`chromium --dump-dom` of `page`, offline, after its scripts ran (5 s of virtual time)."""
    result = subprocess.run(
        [
            chromium_binary(),
            "--headless=new",
            "--no-sandbox",
            f"--user-data-dir={workdir / 'dump-profile'}",
            "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """The text half and `edit_report` run by the real stages on hostile names."""
    root = tmp_path_factory.mktemp("hostile")
    data = pd.read_csv(BUNDLED)
    hotels = sorted(data["hotel_id"].unique())
    renamed = dict(zip(hotels, HOSTILE_HOTELS, strict=False))  # two hotels keep their names
    data["hotel_name"] = data["hotel_id"].map(renamed).fillna(data["hotel_name"])
    data.to_csv(root / "hostile.csv", index=False)
    base = compose("cluster.k_max=12")
    params = base.model_copy(
        update={
            "data": base.data.model_copy(update={"path": str(root / "hostile.csv")}),
            "room_types": base.room_types.model_copy(update={"default": HOSTILE_ROOM_TYPE}),
        }
    )
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for name in ("sample", "caption", "preprocess", "room_types", "features", "cluster"):
            importlib.import_module(f"alien_hotels.stages.{name}").run(params)
        importlib.import_module("alien_hotels.stages.map").run(params)
        # scores for a few photos per hotel, as the edit stages would write them
        sample = pd.read_csv("data/interim/sample.csv")
        picked = sample.groupby("hotel_id").head(3)["image_id"].to_numpy()
        rng = np.random.default_rng(0)
        Path("data/processed/edits").mkdir(parents=True)
        from alien_hotels.editing.runner import TABLE_COLUMNS

        for recipe in params.edit.recipes:
            table = pd.DataFrame({"image_id": picked, "status": "edited"})
            for when in ("before", "after"):
                table[f"alien_score_{when}"] = rng.uniform(0, 1, len(picked)).round(3)
            table = table.reindex(columns=TABLE_COLUMNS)
            table.to_csv(f"data/processed/edits/{recipe}.csv", index=False)
        importlib.import_module("alien_hotels.stages.edit_report").run(params)
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome = Browser(tmp_path_factory.mktemp("chromium"))
    yield chrome
    chrome.close()


def test_dvc_plots_page_runs_no_script_from_a_plot_csv(hostile, tmp_path):
    """Row 3: DVC writes the plot CSV's values into a <script> unescaped; the project's plot
    CSVs carry no `<`, so `</script>` in a hotel name cannot end it."""
    repo = tmp_path / "repo"
    (repo / "plots").mkdir(parents=True)
    (repo / "plots/alien_hotels.csv").write_bytes((hostile / "plots/alien_hotels.csv").read_bytes())
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    wanted = [p for p in plots if isinstance(p, dict) and "alien_hotels" in p]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": wanted}))
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "plots", "show", "--html-template", str(TEMPLATE), "-o", "out"], repo)
    html = dump_dom(repo / "out/index.html", tmp_path)
    assert not injected(html), injected(html)
    dom = Dom(html)
    assert dom.title == "alien-hotels plots"
    # the plot still draws, and a hostile name reads as itself with look-alike brackets
    assert any(t == "svg" and "marks" in a.get("class", "") for t, a in dom.elements), html[-3000:]
    assert "\u2039/script\u203a\u2039script\u203adocument.title=" in html
    assert "'=HYPERLINK(" in html


def render_markdown(report: Path, page: Path) -> None:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(report.read_text(encoding="utf-8"))
    page.write_text(
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>report</title></head>'
        f"<body>{body}</body></html>",
        encoding="utf-8",
    )


def table_rows(html: str, header: str) -> list[list[str]]:
    """The cell texts of each body row of the table whose first header cell is `header`."""
    for table in re.findall(r"<table>.*?</table>", html, flags=re.S):
        cells = [
            re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.S)
            for row in re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)
        ]
        if cells and cells[0] and cells[0][0] == header:
            return cells[1:]
    raise AssertionError(f"no table starting with {header!r}")


@pytest.mark.parametrize("report", ["clusters.md", "alien_ranking.md"])
def test_markdown_reports_render_no_html(hostile, tmp_path, report):
    """Row 4: a report rendered as CommonMark (raw HTML allowed, as in GitHub's or an editor's
    preview) has no element from a name, and a name adds no cell or row."""
    page = tmp_path / "report.html"
    render_markdown(hostile / "reports" / report, page)
    html = dump_dom(page, tmp_path)
    assert not injected(html), injected(html)
    dom = Dom(html)
    assert dom.title == "report"
    # the one link a report writes itself: clusters.md to the cluster cards' index
    own = {"cluster_cards.md"}
    assert not [
        tag
        for tag, attrs in dom.elements
        if tag in ("img", "script") or (tag == "a" and attrs.get("href") not in own)
    ]
    # the names read as themselves (entities decoded by the browser)
    text = html.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    if report == "clusters.md":  # a row per cluster; its room types (hotels: the top 3 only)
        body = table_rows(html, "cluster")
        assert len(body) == json.loads((hostile / "metrics/clustering.json").read_text())["k"]
        assert {len(cells) for cells in body} == {6}
        assert HOSTILE_ROOM_TYPE in text
    else:  # a row per hotel, a column per ranking column; every hotel's name
        ranking = pd.read_csv(hostile / "plots/alien_hotels.csv")
        body = table_rows(html, "rank")
        assert len(body) == len(ranking) == 10
        assert {len(cells) for cells in body} == {len(ranking.columns)}
        assert SCRIPT in text and IMG in text and LINK in text and FORMULA in text
        assert "pipe | cell | new row | nul`code`" in text


def test_cluster_map_draws_names_as_text(hostile, browser):
    """Row 5: plotly draws a subset of HTML in names, hover labels and titles; in every view of
    the map's dropdown (cluster, hotel, room type) and in hover labels a name is only text."""
    session = browser.open(hostile / "reports/cluster_map.html")
    browser.wait(session, "document.querySelector('#cluster-map .legend') !== null")
    # per view: its legend's text, and the map with the hover label of each visible trace
    views = browser.evaluate(
        session,
        """(async () => {
            const gd = document.getElementById('cluster-map');
            const seen = [];
            for (const button of gd.layout.updatemenus[0].buttons) {
                await Plotly.update(gd, button.args[0], button.args[1]);
                const pages = [];
                gd.data.forEach((trace, i) => {
                    if (trace.visible !== true) return;
                    Plotly.Fx.hover(gd, [{curveNumber: i, pointNumber: 0}]);
                    pages.push(gd.outerHTML);
                });
                seen.push({legend: gd.querySelector('.legend').textContent, pages});
            }
            return seen;
        })()""",
    )
    assert "PWNED" not in browser.evaluate(session, "document.title")
    for view in views:
        for page in view["pages"]:
            assert not injected(page), injected(page)
    # the hostile names are listed, as text: hotels, then room types
    assert SCRIPT in views[1]["legend"] and LINK.replace("<", "") not in views[1]["legend"]
    assert HOSTILE_ROOM_TYPE in views[2]["legend"]
    hover = "".join(views[1]["pages"])
    assert "hoverlayer" in hover and "evil.invalid" in hover  # the hover labels were drawn
    data = browser.evaluate(
        session,
        "document.getElementById('cluster-map').data.map(t => [t.name, t.customdata.flat()])",
    )
    assert LINK.replace("<", "&lt;").replace(">", "&gt;") in {name for name, _ in data}
    cells = [cell for _, custom in data for cell in custom]
    assert all("<" not in cell.replace("<br>", "") for cell in cells)
    assert not browser.problems(session), browser.problems(session)


def test_people_csvs_neutralise_formulas_hand_off_csvs_keep_exact_values(hostile):
    """Row 6: CSVs people open prefix a cell a spreadsheet would run (OWASP); the CSVs a later
    stage reads keep the exact names; numbers stay numbers."""
    people = {
        "data/processed/clusters.csv": "hotel_name",
        "plots/alien_hotels.csv": "hotel_name",
    }
    for path, column in people.items():
        table = read_csv(hostile / path, [column], what=path)
        names = set(table[column])
        assert "'" + FORMULA in names and "'" + MINUS in names, path
        assert not [n for n in names if n.startswith(("=", "+", "-", "@", "\t", "\r"))], path
        numeric = table.select_dtypes("number")
        assert len(numeric.columns) >= 2, path  # scores, coordinates: still numbers
    hand_off = ["data/interim/sample.csv", "data/processed/texts.csv"]
    for path in hand_off:
        names = set(read_csv(hostile / path, ["hotel_name"], what=path)["hotel_name"])
        assert FORMULA in names and MINUS in names and BREAKS in names, path
    labels = read_csv(hostile / "data/processed/cluster_labels.csv", ["room_type"], what="labels")
    assert HOSTILE_ROOM_TYPE in set(labels["room_type"])


# The helpers, imported where used: the page tests above run (and fail) on code without them.


def test_markdown_cell():
    from alien_hotels.common import markdown_cell

    assert markdown_cell("Inn & Suites") == "Inn & Suites"  # plain text stays as it is
    assert markdown_cell("a|b") == r"a\|b"
    assert markdown_cell("x\n| y |\r\nz\x00\x1b(B\t!") == r"x \| y \| z(B !"
    assert markdown_cell("<img onerror=x>") == "&lt;img onerror=x&gt;"
    assert markdown_cell("&lt; &#60; &#x3c;") == "&amp;lt; &amp;#60; &amp;#x3c;"
    assert markdown_cell("`code` [a](http://x) \\") == r"\`code\` \[a\](http://x) \\"
    assert markdown_cell("\u202eevil\u2066") == "evil"  # no bidi reordering
    assert markdown_cell(0.5) == "0.5"


def test_plotly_text():
    from alien_hotels.common import plotly_text

    assert plotly_text("Inn & Suites") == "Inn & Suites"
    assert plotly_text(LINK) == LINK.replace("<", "&lt;").replace(">", "&gt;")
    assert plotly_text("&lt;b&gt;") == "&amp;lt;b&amp;gt;"


def test_spreadsheet_rule(tmp_path):
    from alien_hotels.common import spreadsheet_safe, write_report_csv

    for cell in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", FORMULA):
        assert spreadsheet_safe(cell) == "'" + cell
    for value in ("Hotel", "", " =x", -1.5, -2, None):
        assert spreadsheet_safe(value) == value
    table = pd.DataFrame(
        {"name": [FORMULA, "<b>Inn</b>", "Inn"], "score": [-1.5, 0.25, 2.0], "n": [-1, 0, 1]}
    )
    write_report_csv(table, tmp_path / "people.csv")
    write_report_csv(table, tmp_path / "plot.csv", plotted=True)
    write_csv(table, tmp_path / "hand_off.csv")
    people = pd.read_csv(tmp_path / "people.csv")
    assert people["name"].tolist() == ["'" + FORMULA, "<b>Inn</b>", "Inn"]
    assert people[["score", "n"]].equals(table[["score", "n"]])  # negative numbers untouched
    plot = pd.read_csv(tmp_path / "plot.csv")
    assert plot["name"].tolist()[1] == "\u2039b\u203aInn\u2039/b\u203a"
    assert pd.read_csv(tmp_path / "hand_off.csv").equals(table)


@pytest.mark.parametrize("dtype", [object, "string"])
@pytest.mark.parametrize("plotted", [False, True])
def test_report_cells_equal_the_rule_cell_by_cell(dtype, plotted):
    """The vectorised column rule is `spreadsheet_safe` (and the look-alikes) of each cell; cells
    that are not text (missing, numbers in an object column) keep their value."""
    from alien_hotels.common import PLOT_LOOKALIKES, report_cells, spreadsheet_safe

    cells = [FORMULA, "+1", "-x", "@a", "\tx", "\rx", "<b>", " =x", "Inn", "", None, "\uff1dx"]
    if dtype is object:
        cells += [np.nan, 3, -1.5]
    column = pd.Series(cells, dtype=dtype)

    def one(value):
        if plotted and isinstance(value, str):
            value = value.translate(PLOT_LOOKALIKES)
        return spreadsheet_safe(value)

    got = report_cells(column, plotted=plotted)
    expected = [one(v) for v in column]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (pd.isna(g) and pd.isna(e)) or g == e, (g, e)
