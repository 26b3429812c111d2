"""`dvc plots show` / `dvc plots diff` pages and the plotly map, opened in a real browser offline.

Headless Chromium (Debian's `chromium`; `make setup-browser` installs it) is driven over the
DevTools protocol on a pipe, with every network connection refused: each page must draw all its
plots from what it carries, with no console error and no request leaving file://. A control run
with DVC's own page (vega from a CDN) shows the refusal works: there nothing draws.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, copy_project, run

TEMPLATE = ROOT / ".dvc/plots/offline.html"
VENDORED = {"vega": "5.33.0", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
# DVC's plot div: `<div id = "NAME"> <script ...> var spec = {...}; vegaEmbed('#NAME', spec);`
SPEC = re.compile(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (.*?);\n')

# Per vega plot div (vega-embed replaces its script): vega's own <svg class="marks"> (vega-embed's
# menu icon is an svg too) and what each data mark drew (axes, legends and titles are
# role-axis/-legend/-title, not role-mark): its items, and the vertices of their paths.
VEGA_STATE = """
IDS.map(id => document.getElementById(id)).map(d => ({
  id: d.id,
  drawn: d.querySelector("svg.marks") !== null,
  failed: d.textContent.includes("plot failed"),
  empty: d.dataset.empty === "true" && d.hidden,
  width: (d.querySelector("svg.marks") || {getBoundingClientRect: () => ({width: 0})})
    .getBoundingClientRect().width,
  texts: [...d.querySelectorAll("svg.marks g.mark-text.role-mark text")].map(t => t.textContent),
  marks: [...d.querySelectorAll("svg.marks g.role-mark")].map(g => ({
    mark: g.getAttribute("class"),
    items: g.childElementCount,
    vertices: [...g.children].reduce(
      (n, item) => n + ((item.getAttribute("d") || "").match(/[ML]/g) || []).length, 0),
  })),
  legend: [...d.querySelectorAll("svg.marks .role-legend-label text")].map(t => t.textContent),
}))
"""
IMAGES = "[...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
# Each image's natural size and where it lies: inside the window's width, whole
IMAGE_BOXES = """[...document.images].map(i => ({src: i.getAttribute("src"), width: i.naturalWidth,
  height: i.naturalHeight, left: i.getBoundingClientRect().left,
  right: i.getBoundingClientRect().right, page: document.documentElement.clientWidth}))"""
EMPTY_NOTE = "(document.getElementById('empty-plots') || {}).textContent || ''"


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.fail(
        "Chromium is not installed, so the plot pages cannot be checked in a browser: "
        "`make setup-browser` installs it (Debian's chromium; `make test` runs it first)",
        pytrace=False,
    )


class Browser:
    """Headless Chromium over `--remote-debugging-pipe`: JSON messages ending in NUL, fd 3 to the
    browser and fd 4 back. Records each page's console errors, exceptions, error log entries
    and requests, whose URLs must stay on file: (or data:/blob:/about:)."""

    def __init__(self, workdir: Path, screenshots: Path | None = None):
        self.screenshots = screenshots or workdir / "screenshots"  # `screenshot` writes here
        self.screenshots.mkdir(parents=True, exist_ok=True)
        to_browser, self._in = os.pipe()
        self._out, from_browser = os.pipe()
        # at fd 3 and 4 in the child; F_DUPFD (>= 10) first so neither overwrites the other
        fds = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
        self.log = workdir / "chromium.log"
        args = [
            chromium_binary(),
            "--headless=new",
            "--no-sandbox",  # root in containers and CI
            "--remote-debugging-pipe",
            f"--user-data-dir={workdir / 'profile'}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # offline: no proxy listens on port 9, and no host name resolves
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-unsafe-swiftshader",  # software WebGL for the plotly map (Scattergl)
            "--window-size=1400,1000",
            "about:blank",
        ]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=False,
                preexec_fn=lambda: (os.dup2(fds[0], 3), os.dup2(fds[1], 4)),
            )
        for fd in (to_browser, from_browser, *fds):
            os.close(fd)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._out, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))
        self._messages.put(None)

    def _pump(self, timeout: float) -> None:
        message = self._messages.get(timeout=timeout)
        if message is None:
            raise AssertionError(f"chromium exited; its log:\n{self.log.read_text()[-4000:]}")
        if "id" in message:
            self._replies[message["id"]] = message
        else:
            self.events.append(message)

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._in, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while self._next_id not in self._replies:
            self._pump(max(0.01, deadline - time.monotonic()))
        reply = self._replies.pop(self._next_id)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    def open(self, path: Path) -> str:
        """A new tab showing `path`, loaded; returns its session id."""
        assert path.is_file(), path
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session)
        url = path.resolve().as_uri()
        self.call("Page.navigate", session, url=url)
        self.wait(
            session, f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
        )
        return session

    def evaluate(self, session: str, expression: str):
        result = self.call(
            "Runtime.evaluate",
            session,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait(self, session: str, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(session, expression)):
            assert time.monotonic() < deadline, (
                f"timed out waiting for {expression}; {self.problems(session)}"
            )
            time.sleep(0.25)
        return value

    def problems(self, session: str) -> list[str]:
        """Console errors, uncaught exceptions, error log entries and requests off file://."""
        found = []
        for event in (e for e in self.events if e.get("sessionId") == session):
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                args = params.get("args", [])
                found.append("console: " + " ".join(str(a.get("value", a)) for a in args))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                error = (details.get("exception") or {}).get("description") or details["text"]
                found.append(f"exception: {error}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"log: {entry['text']} {entry.get('url', '')}")
            elif method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if not url.startswith(("file:", "data:", "blob:", "about:")):
                    found.append(f"request: {url}")
        return found

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=10)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._in)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    # $PLOTS_SCREENSHOTS keeps them to look at; else pytest's temporary folder (pytest prunes it)
    shots = os.environ.get("PLOTS_SCREENSHOTS")
    chrome = Browser(tmp_path_factory.mktemp("chromium"), Path(shots) if shots else None)
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh copy with the pipeline run on the bundled sample (no images: the edit plots'
    CSVs hold their header only)."""
    repo = copy_project(tmp_path_factory.mktemp("plots") / "repo")
    run(["dvc", "pull", "-q", "-r", "bundled", "data.dvc"], repo)
    run(["dvc", "repro"], repo)
    # Committed, as a user would: HEAD's PNG plots are then in this machine's cache. Their bytes
    # depend on the CPU's BLAS kernels (the t-SNE layout), so the committed dvc.lock's may not be.
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "repro", "--allow-empty"], repo)
    return repo


def declared_plots(repo: Path) -> tuple[set[str], set[str]]:
    """The top-level plots of dvc.yaml: vega plot names, image files (that exist in `repo`)."""
    plots = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    vega = {name for entry in plots if isinstance(entry, dict) for name in entry}
    # an image plot that is a folder (the cluster cards) draws its files: none without photos
    images = {
        entry
        for entry in plots
        if isinstance(entry, str)
        and ((repo / entry).is_file() or any((repo / entry).glob("*.jpg")))
    }
    return vega, images


def page_specs(page: Path) -> dict[str, dict]:
    """Vega plot name -> the vega-lite spec DVC wrote into the page."""
    return {name: json.loads(spec) for name, spec in SPEC.findall(page.read_text("utf-8"))}


def vega_state(ids) -> str:
    """JS: the state of the vega plot divs with these ids (`VEGA_STATE`)."""
    return VEGA_STATE.replace("IDS", json.dumps(sorted(ids)))


def show_page(browser: Browser, page: Path, shot: str | None = None):
    """Open a plots page and wait until each of its vega plots drew, failed or was left out
    (no rows); with `shot`, screenshot the whole page and each drawn plot
    (`browser.screenshots`).
    Returns (plot states, images, problems, session)."""
    state = vega_state(page_specs(page))
    session = browser.open(page)
    browser.wait(session, f"({state}).every(p => p.drawn || p.failed || p.empty)")
    browser.wait(session, "[...document.images].every(i => i.complete)")
    time.sleep(0.5)  # late console messages
    plots = browser.evaluate(session, state)
    if shot:
        screenshot(browser, session, f"{shot}.png")
        for plot in plots:
            if plot["drawn"]:
                screenshot(browser, session, f"{shot}-{plot['id']}.png", f"#{plot['id']}")
    return plots, browser.evaluate(session, IMAGES), browser.problems(session), session


def screenshot(browser: Browser, session: str, name: str, selector: str | None = None) -> Path:
    """A PNG of the page (all of it) or of one element, into `browser.screenshots`."""
    box = browser.evaluate(
        session,
        f"(e => {{ const r = e.getBoundingClientRect(); return {{x: r.x + scrollX, y: r.y + "
        f"scrollY, width: Math.max(r.width, e.scrollWidth), height: Math.max(r.height, "
        f"e.scrollHeight), scale: 1}}; }})"
        f"(document.querySelector({json.dumps(selector or 'html')}))",
    )
    data = browser.call(
        "Page.captureScreenshot", session, format="png", clip=box, captureBeyondViewport=True
    )["data"]
    path = browser.screenshots / name
    path.write_bytes(base64.b64decode(data))
    return path


def rows(spec: dict) -> int:
    return len(spec.get("data", {}).get("values", []))


def per_mark(plot: dict, key: str, lines: bool) -> list[int]:
    """Items or vertices per mark of the spec (a series of a line is a mark group of its own)."""
    totals: dict[str, int] = {}
    for group in plot["marks"]:
        if ("mark-line" in group["mark"]) == lines:
            totals[group["mark"]] = totals.get(group["mark"], 0) + group[key]
    return list(totals.values())


def line_vertices(plot: dict) -> int:
    """The most vertices drawn by one line mark over its series: a vertex per row."""
    return max(per_mark(plot, "vertices", lines=True), default=0)


def drawn_rows(plot: dict) -> int:
    """The rows a vega plot drew: line vertices, or the most items of another mark (a bar or a
    point per row, DVC's hover rules per x)."""
    return max(line_vertices(plot), *per_mark(plot, "items", lines=False), 0)


def test_template_carries_pinned_libraries_and_no_cdn_scripts():
    """The vendored copies are intact (each block's sha256 is the one in its header), licensed,
    the versions docs/plots.md gives, and DVC's `{scripts}` (its CDN tags) is left out."""
    page = TEMPLATE.read_text("utf-8")
    blocks = re.findall(
        r"<script>/\* vendored: ([\w-]+)@(\S+) (\S+) (\S+) sha256=(\w+) \*/\n(.*?)</script>",
        page,
        flags=re.S,
    )
    assert {name: version for name, version, *_ in blocks} == VENDORED
    docs = (ROOT / "docs/plots.md").read_text()
    for name, version, _file, licence, sha, code in blocks:
        assert hashlib.sha256(code.encode()).hexdigest() == sha, f"{name}: edited or corrupted"
        assert licence == "BSD-3-Clause"
        assert "Copyright" in (TEMPLATE.parent / "LICENSES" / f"{name}.txt").read_text()
        assert f"| {name} | {version} |" in docs
    assert "{plot_divs}" in page and "{scripts}" not in page
    assert "<script src" not in page
    config = run(["dvc", "config", "plots.html_template"], ROOT).stdout.strip()
    assert (ROOT / ".dvc" / config).resolve() == TEMPLATE


@pytest.mark.slow
def test_dvc_plots_show_draws_every_plot_once_offline(browser, project, tmp_path):
    vega, images = declared_plots(project)
    run(["dvc", "plots", "show"], project)
    page = project / "dvc_plots/index.html"
    html = page.read_text("utf-8")
    assert "<script src" not in html and "cdn.jsdelivr.net" not in html
    specs = page_specs(page)
    # each plot once: no second copy of a CSV from a stage's `plots:` (drawn against its index)
    assert sorted(specs) == sorted(vega), "every declared vega plot, once"
    state, imgs, problems, session = show_page(browser, page, shot="show")

    assert not problems, problems
    assert {p["id"] for p in state} == vega
    # the bundled sample has no images: only the elbow has rows. The edit plots' CSVs hold their
    # header only: left out (not empty axes), and named in one line at the end of the page.
    empty = [name for name in specs if rows(specs[name]) == 0]
    assert sorted(empty) == sorted(vega - {"elbow"})
    for plot in state:
        if plot["id"] in empty:
            assert plot["empty"] and not plot["drawn"], plot
        else:
            assert plot["drawn"] and not plot["failed"] and not plot["empty"], plot
            assert drawn_rows(plot) == rows(specs[plot["id"]]), plot
    assert (
        browser.evaluate(session, EMPTY_NOTE) == f"Not drawn, no rows to plot: {', '.join(empty)}"
    )
    # the elbow: a vertex per k, drawn large enough to read, the chosen k marked and labelled
    elbow = next(p for p in state if p["id"] == "elbow")
    assert rows(specs["elbow"]) == len(pd.read_csv(project / "plots/elbow.csv")) == 29
    assert line_vertices(elbow) == 29 and elbow["legend"] == ["workspace"]
    chosen = json.loads((project / "metrics/clustering.json").read_text())["k"]
    assert elbow["texts"] == [f"k = {chosen}"], elbow
    assert sorted(per_mark(elbow, "items", lines=False)) == [1, 1, 1, 29]  # rule, point, label
    assert elbow["width"] >= 600, elbow  # DVC's own templates are 300 px wide
    # the map PNG (the one image: the empty edit sweep's is not a plot) fits the window, stacked
    assert len(imgs) == len(images) == 1 and all(loaded for _, loaded in imgs), imgs
    assert_images_fit(browser, session)

    # the control: DVC's own page (vega from the CDN) draws nothing here
    from dvc_render.html import PAGE_HTML

    (tmp_path / "cdn.html").write_text(PAGE_HTML)
    out = tmp_path / "cdn_plots"
    run(
        ["dvc", "plots", "show", "--html-template", str(tmp_path / "cdn.html"), "-o", str(out)],
        project,
    )
    session = browser.open(out / "index.html")
    time.sleep(2)
    cdn_state = browser.evaluate(session, vega_state(page_specs(out / "index.html")))
    assert len(cdn_state) == len(vega) and not any(p["drawn"] for p in cdn_state)
    blocked = browser.problems(session)
    assert any("request: https://cdn.jsdelivr.net/npm/vega" in p for p in blocked), blocked


def assert_images_fit(browser: Browser, session: str) -> None:
    """Every image lies within the window's width at its own size: the map is narrower than a
    page (its panels stacked, each legend below its panel), so nothing is scaled or cut off."""
    for image in browser.evaluate(session, IMAGE_BOXES):
        assert image["left"] >= 0 and image["right"] <= image["page"], image
        assert image["width"] <= 1000 < image["height"], image  # stacked: taller than wide
        assert image["right"] - image["left"] == image["width"], image  # not shrunk


def synthetic(columns: list[str], n: int) -> pd.DataFrame:
    """n rows for a header-only plot CSV: numbers, and names for the text columns."""
    text = {"hotel_name", "hotel_id"}
    return pd.DataFrame(
        {
            c: [f"hotel {i}" if c in text else round(0.1 * i + 0.05, 2) for i in range(n)]
            for c in columns
        }
    )


@pytest.mark.slow
def test_every_plot_draws_its_rows(browser, project, tmp_path):
    """The edit plots are empty on the bundled sample (no images): with rows in their CSVs, each
    top-level definition finds its columns and draws a mark per row."""
    originals = {p: p.read_bytes() for p in (project / "plots").glob("*.csv")}
    try:
        for path in originals:
            table = pd.read_csv(path)
            if table.empty:
                synthetic(list(table.columns), 6).to_csv(path, index=False)
        out = tmp_path / "filled"
        run(["dvc", "plots", "show", "-o", str(out)], project)
        specs = page_specs(out / "index.html")
        state, _, problems, _ = show_page(browser, out / "index.html", shot="filled")
    finally:
        for path, data in originals.items():
            path.write_bytes(data)
    assert not problems, problems
    assert len(state) == len(declared_plots(project)[0])
    for plot in state:
        assert plot["drawn"] and not plot["failed"] and not plot["empty"], plot
        assert drawn_rows(plot) == rows(specs[plot["id"]]) > 0, plot
    # imagic_alpha draws two columns (ssim, success): a line each, 6 vertices each
    imagic = next(p for p in state if p["id"] == "imagic_alpha")
    assert line_vertices(imagic) == rows(specs["imagic_alpha"]) == 2 * 6
    assert set(imagic["legend"]) >= {"ssim", "success"}


@pytest.mark.slow
def test_dvc_plots_diff_of_two_experiments(browser, project, tmp_path):
    """Two runs that differ only in k: the same sweep, so the same curve; the chosen k marked on
    each (in its revision's colour) is what tells them apart."""
    head_k = json.loads((project / "metrics/clustering.json").read_text())["k"]
    other_k = head_k + 3
    run(["dvc", "exp", "run", "-n", "other-k", "-S", f"cluster.k={other_k}"], project)
    out = tmp_path / "diff"
    run(["dvc", "plots", "diff", "HEAD", "other-k", "-o", str(out)], project)
    specs = page_specs(out / "index.html")
    state, imgs, problems, session = show_page(browser, out / "index.html", shot="diff")
    assert not problems, problems
    assert sorted(specs) == sorted(declared_plots(project)[0])
    by_id = {p["id"]: p for p in state}
    assert all((p["drawn"] and not p["failed"]) or p["empty"] for p in state), state
    # the elbow of both: k = 1..29 twice, a series (and legend entry) per experiment
    values = specs["elbow"]["data"]["values"]
    assert sorted({v["rev"] for v in values}) == ["HEAD", "other-k"]
    curves = {
        rev: [(v["k"], v["inertia"]) for v in values if v["rev"] == rev]
        for rev in ("HEAD", "other-k")
    }
    assert curves["HEAD"] == curves["other-k"]  # the curves alone cannot tell them apart
    elbow = by_id["elbow"]
    assert len(values) == 2 * 29 and line_vertices(elbow) == 2 * 29
    assert set(elbow["legend"]) == {"HEAD", "other-k"}
    assert sorted(elbow["texts"]) == sorted([f"k = {head_k}", f"k = {other_k}"]), elbow
    assert len(imgs) == 2 * len(declared_plots(project)[1]), imgs  # each image per revision
    assert all(loaded for _, loaded in imgs), imgs
    assert_images_fit(browser, session)  # side by side they would not: one under the other


@pytest.mark.slow
def test_cluster_map_draws_its_points_offline(browser, project, tmp_path):
    """reports/cluster_map.html carries plotly.js: its WebGL scatter draws every mapped row."""
    page = project / "reports/cluster_map.html"
    assert "<script src=" not in page.read_text("utf-8")
    session = browser.open(page)
    browser.wait(session, "document.querySelector('#cluster-map .main-svg') !== null")
    browser.wait(session, "document.querySelector('#cluster-map canvas') !== null")
    time.sleep(1)
    shown = browser.evaluate(
        session,
        "document.getElementById('cluster-map')._fullData"
        ".filter(t => t.visible === true).reduce((n, t) => n + t._length, 0)",
    )
    assert shown == len(pd.read_csv(project / "data/processed/clusters.csv")) == 313
    # the points themselves: saturated pixels inside the plot area (grid lines are grey)
    box = browser.evaluate(
        session,
        "(r => ({x: r.x, y: r.y, width: r.width, height: r.height, scale: 1}))"
        "(document.querySelector('#cluster-map .nsewdrag').getBoundingClientRect())",
    )
    png = browser.call("Page.captureScreenshot", session, format="png", clip=box)["data"]
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB"), dtype=int)
    coloured = int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())
    assert coloured > 313 * 4, f"{coloured} coloured pixels: the points did not draw"
    assert not browser.problems(session), browser.problems(session)
