"""Our `images` stage against img2dataset, on the same URLs from a loopback server.

    python -m benchmarks.bench_images [--urls 20000] [--threads 8] [--skip-img2dataset]
    python -m benchmarks.bench_images --scale 2000 5000 10000 20000 [--threads 8]
    python -m benchmarks.bench_images --urls 4000 --baseline-src /tmp/base/src  # before/after

A threaded HTTP server on 127.0.0.1 (in this process) serves `--urls` small JPEGs: a pool of
distinct pictures (320 to 1600 px on the longer side, about half larger than 640; generated once
into a temporary folder and reused), each URL answering after a latency drawn with a fixed seed
(3 to 50 ms; 1 % of the URLs 0.5 to 1.5 s more), 2 % of them 404 and 1 % 500, with
`TCP_NODELAY` as real image hosts set it (without it every reused keep-alive connection waited
~40 ms a request for a delayed ACK, a cost of the test server that only a client reusing
connections paid). Then, each in a child process of its own (so neither pays for the server):

* **alien-hotels**: the real stage (`alien_hotels.stages.images.run`) with `conf/` composed as
  `dvc repro` would (`images.download=true`, `images.workers=<threads>`, `images.retries=
  <retries>`; `images.allow_private_addresses=true` and `images.per_host_workers=<threads>` when
  the config has those keys: the server is on loopback and is the only host). Resize: longer side
  640, small images enlarged (`images.longer_side: 640`, `images.upscale: true`), JPEG quality 95.
* **img2dataset** (the tool practitioners use): `processes_count=1`, `thread_count=<threads>`,
  `image_size=640, resize_mode="keep_ratio_largest"` (longer side 640; `keep_ratio` would set
  the *shorter* side), `resize_only_if_bigger=False` (enlarges small images, as ours does),
  `encode_quality=95`, `retries=<retries>`, `output_format="files"`, its other defaults (sha256
  of each image, EXIF extraction, area/lanczos interpolation).

Retries are equal: `--retries` (default 1) on both sides. img2dataset retries any failure at
once (404 too); ours retries connection errors, 429 and 5xx, the first retry without a backoff
sleep (urllib3 sleeps from the second on), so with one retry neither waits between attempts.

For each: images/s (wall time of the download call), CPU seconds per image (user+system of the
child process and everything it waited for, from `getrusage(RUSAGE_CHILDREN)` deltas, interpreter
start-up included), failures, and the peak RSS of the child's whole process tree (sampled every
0.1 s). `--scale N N ...` runs only our stage at each URL count, fits a line through time,
CPU and peak RSS against URLs (the slope: the cost per URL at steady state) and extrapolates it
to Hotels-50K's 1.1M. `--baseline-src` runs our stage a second time from another source tree
(say, the last commit's), so a change is compared before/after in one run, against the same
img2dataset figures.

img2dataset is a benchmark-only dependency (the `bench` extra). It pins `pandas<3` and this
project pins pandas 3, so it cannot share the project's environment; give it one of its own:

    python -m venv .venv-bench && .venv-bench/bin/pip install img2dataset==1.47.0
    python -m benchmarks.bench_images --img2dataset-python .venv-bench/bin/python

Without one (`--img2dataset-python`, default: this interpreter, then `.venv-bench/bin/python`)
the img2dataset run is skipped with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOTELS50K_URLS = 1_124_215
I2D_VERSION = "1.47.0"

OURS = r"""
import json, resource, sys, time
from pathlib import Path

def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

from alien_hotels.config import compose_params, validate_params
from alien_hotels.stages.images import run
from alien_hotels.stages.paths import StagePaths

conf, root, overrides = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
params = validate_params(compose_params(overrides, conf))
paths = StagePaths().under(root)
t, c = time.perf_counter(), cpu()
metrics = run(params, paths)
print("RESULT " + json.dumps({"call_s": time.perf_counter() - t, "call_cpu_s": cpu() - c,
                              "ok": metrics["ok"], "failed": metrics["failed"],
                              "reasons": metrics["failed_by_reason"]}), flush=True)
"""

I2D = r"""
import glob, json, os, resource, sys, time

def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download
    urls, out, threads, retries = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    t, c = time.perf_counter(), cpu()
    download(url_list=urls, input_format="txt", output_folder=out, output_format="files",
             processes_count=1, thread_count=threads, image_size=640,
             resize_mode="keep_ratio_largest", resize_only_if_bigger=False, encode_format="jpg",
             encode_quality=95, timeout=30, retries=retries, enable_wandb=False)
    call_s, call_cpu = time.perf_counter() - t, cpu() - c
    stats = [json.load(open(p)) for p in glob.glob(os.path.join(out, "*_stats.json"))]
    reasons = {}
    for s in stats:
        for k, v in s.get("status_dict", {}).items():
            if k != "success":
                reasons[k[:40]] = reasons.get(k[:40], 0) + v
    ok = sum(s["successes"] for s in stats)
    failed = sum(s["count"] - s["successes"] for s in stats)
    print("RESULT " + json.dumps({"call_s": call_s, "call_cpu_s": call_cpu, "ok": ok,
                                  "failed": failed, "reasons": reasons}), flush=True)
"""


# --- the server -------------------------------------------------------------------------------


def make_pictures(count: int, seed: int) -> list[bytes]:
    """`count` distinct JPEGs of varied sizes, cached in the temporary folder across runs."""
    import numpy as np
    from PIL import Image

    folder = Path(tempfile.gettempdir(), "alien-hotels-bench-images", f"{seed}-{count}")
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sides = [320, 400, 480, 560, 640, 800, 1024, 1280, 1600]
    pictures = []
    for i in range(count):
        path = folder / f"{i}.jpg"
        longer = rng.choice(sides)
        ratio = rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0])
        portrait = rng.random() < 0.25
        if not path.is_file():
            shorter = max(16, round(longer / ratio))
            w, h = (shorter, longer) if portrait else (longer, shorter)
            gen = np.random.default_rng([seed, i])
            y, x = np.mgrid[0:h, 0:w]
            base = gen.integers(0, 256, 3)
            img = np.stack(
                [(base[k] + x * (k + 1) / 7 + y * (3 - k) / 5) % 256 for k in range(3)], -1
            )
            img = img + gen.normal(0, 6, img.shape)  # some texture: photo-like file sizes
            buffer = io.BytesIO()
            Image.fromarray(img.clip(0, 255).astype("uint8")).save(buffer, "JPEG", quality=85)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(buffer.getvalue())
            tmp.replace(path)
        pictures.append(path.read_bytes())
    return pictures


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client closing its keep-alive connection at exit is not news


class BenchServer:
    """`/img/<i>.jpg` for i < urls: a fixed plan of status and latency per URL, from `seed`."""

    def __init__(self, urls: int, pictures: list[bytes], seed: int = 0) -> None:
        rng = random.Random(seed)
        self.plan = []
        for _ in range(urls):
            u = rng.random()
            status = 404 if u < 0.02 else 500 if u < 0.03 else 200
            latency = rng.uniform(0.003, 0.05)
            if rng.random() < 0.01:
                latency += rng.uniform(0.5, 1.5)  # a slow answer (under every timeout)
            self.plan.append((status, latency))
        self.pictures = pictures
        self.hits: Counter[int] = Counter()
        self._lock = threading.Lock()
        self.httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 256

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/img/{i}.jpg"

    def expected_failures(self, urls: int | None = None) -> int:
        """How many of the first `urls` URLs answer 404 or 500 (every retry too)."""
        return sum(status != 200 for status, _ in self.plan[:urls])

    def __enter__(self) -> BenchServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts do
            # TCP_NODELAY on each connection, as image hosts and CDNs set it (nginx's
            # `tcp_nodelay on` default): without it the body's last segment waits for the
            # client's delayed ACK on a reused connection, ~40 ms a request that only a client
            # reusing connections pays (a new connection starts in quick-ACK mode).
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                i = int(name.split(".")[0]) if name.split(".")[0].isdigit() else -1
                if not 0 <= i < len(server.plan):
                    status, latency = 404, 0.0
                else:
                    status, latency = server.plan[i]
                    with server._lock:
                        server.hits[i] += 1
                time.sleep(latency)
                if status == 200:
                    body, ctype = server.pictures[i % len(server.pictures)], "image/jpeg"
                else:
                    body, ctype = f"error {status}".encode(), "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


# --- running a tool in a child process --------------------------------------------------------


def measure(cmd: list[str], cwd: Path, log: Path, src: Path = ROOT / "src") -> dict:
    """Run `cmd`; its wall time, CPU time (rusage of waited-for children), peak tree RSS."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(src), NO_ALBUMENTATIONS_UPDATE="1")
    with open(log, "w") as err:
        proc = psutil.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        peak = 0
        out_chunks: list[str] = []
        reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()))
        reader.start()
        while proc.poll() is None:
            try:
                tree = [proc, *proc.children(recursive=True)]
                rss = 0
                for p in tree:
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.1)
        reader.join()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    result = next(
        (
            json.loads(line[7:])
            for line in "".join(out_chunks).splitlines()
            if line.startswith("RESULT ")
        ),
        None,
    )
    if proc.returncode != 0 or result is None:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{cmd[:3]} failed (rc {proc.returncode}):\n{tail}")
    return {
        **result,
        "process_s": wall,
        "cpu_s": user + system,
        "cpu_user_s": user,
        "cpu_system_s": system,
        "peak_rss_mb": peak / 2**20,
    }


def ours_overrides(threads: int, retries: int) -> list[str]:
    from alien_hotels.config import compose_params

    overrides = ["images.download=true", f"images.workers={threads}", f"images.retries={retries}"]
    keys = compose_params(overrides, ROOT / "conf")["images"]
    if "allow_private_addresses" in keys:
        overrides.append("images.allow_private_addresses=true")  # the server is on loopback
    if "per_host_workers" in keys:
        overrides.append(f"images.per_host_workers={threads}")  # it is also the only host
    return overrides


def run_ours(
    server: BenchServer,
    urls: int,
    threads: int,
    retries: int,
    work: Path,
    prefix: str = "",
    src: Path = ROOT / "src",
) -> dict:
    import pandas as pd

    root = work / f"ours-{urls}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data/interim").mkdir(parents=True)
    ids = range(1_000_000, 1_000_000 + urls)
    pd.DataFrame(
        {
            "image_id": ids,
            "hotel_id": [10_000 + i // 20 for i in range(urls)],  # 20 images a hotel
            "url": [server.url(i) for i in range(urls)],
            "source": "travel_website",
            "chain_id": [i // 20 % 92 for i in range(urls)],
            "image_name": [f"{i}.jpg" for i in ids],
        }
    ).to_csv(root / "data/interim/sample.csv", index=False)
    script = work / "ours.py"
    script.write_text(OURS)
    overrides = ours_overrides(threads, retries)
    cmd = [sys.executable, str(script), str(ROOT / "conf"), str(root), json.dumps(overrides)]
    cmd = shlex.split(prefix) + cmd if prefix else cmd
    result = measure(cmd, root, work / f"ours-{urls}.log", src)
    result["files"] = sum(1 for p in (root / "data/images").rglob("*.jpg"))
    result["expected_failures"] = server.expected_failures(urls)
    shutil.rmtree(root / "data/images", ignore_errors=True)
    return result


def find_img2dataset(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else [sys.executable, str(ROOT / ".venv-bench/bin/python")]
    for python in candidates:
        if python and Path(python).exists():
            ok = subprocess.run([python, "-c", "import img2dataset"], capture_output=True)
            if ok.returncode == 0:
                return os.path.abspath(python)  # the child runs in another folder
    return None


def run_img2dataset(
    python: str, server: BenchServer, urls: int, threads: int, retries: int, work: Path
) -> dict:
    root = work / f"img2dataset-{urls}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "urls.txt").write_text("".join(server.url(i) + "\n" for i in range(urls)))
    script = root / "i2d.py"
    script.write_text(I2D)
    out = root / "out"
    cmd = [python, str(script), str(root / "urls.txt"), str(out), str(threads), str(retries)]
    result = measure(cmd, root, work / f"img2dataset-{urls}.log")
    result["files"] = sum(1 for p in out.rglob("*.jpg"))
    result["expected_failures"] = server.expected_failures(urls)
    shutil.rmtree(root, ignore_errors=True)
    return result


def report(tool: str, urls: int, r: dict) -> None:
    r["images_per_s"] = urls / r["call_s"]
    r["cpu_ms_per_image"] = 1000 * r["cpu_s"] / urls
    r["call_cpu_ms_per_image"] = 1000 * r["call_cpu_s"] / urls
    print(
        f"{tool:<22} {urls:>7} {r['ok']:>7} {r['failed']:>6} {r['call_s']:>8.1f} "
        f"{r['images_per_s']:>8.1f} {r['cpu_ms_per_image']:>10.2f} "
        f"{r['call_cpu_ms_per_image']:>10.2f} {r['peak_rss_mb']:>8.0f}",
        flush=True,
    )
    print("BENCH " + json.dumps({"tool": tool, "urls": urls, **r}), flush=True)


HEADER = (
    f"{'tool':<22} {'urls':>7} {'ok':>7} {'failed':>6} {'wall_s':>8} {'img/s':>8} "
    f"{'cpu_ms/img':>10} {'(in call)':>10} {'rss_mb':>8}"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--retries", type=int, default=1, help="retries on both sides")
    parser.add_argument("--pictures", type=int, default=500, help="distinct JPEGs served")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-img2dataset", action="store_true")
    parser.add_argument("--img2dataset-python", help="an interpreter that has img2dataset")
    parser.add_argument(
        "--ours-prefix",
        default="",
        help="command put before our stage's child (a profiler: 'py-spy record -o F --')",
    )
    parser.add_argument(
        "--scale",
        type=int,
        nargs="+",
        metavar="N",
        help="our stage alone at each of these URL counts (two or more): growth and 1.1M estimate",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also run our stage from this source tree (its `alien_hotels` package's parent, e.g. "
        "`git archive HEAD src | tar -x -C /tmp/base` then /tmp/base/src): before and after in "
        "one run",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every tool this many times, in turn"
    )
    args = parser.parse_args(argv)
    if args.scale is not None and len(args.scale) < 2:
        parser.error("--scale needs two or more URL counts")
    sizes = sorted(set(args.scale)) if args.scale else [args.urls]
    biggest = max(sizes)
    pictures = make_pictures(min(args.pictures, biggest), args.seed)
    python = None
    if not args.scale and not args.skip_img2dataset:
        python = find_img2dataset(args.img2dataset_python)
        if python is None:
            print(
                "img2dataset: not installed, skipped (it pins pandas<3: python -m venv "
                f".venv-bench && .venv-bench/bin/pip install img2dataset=={I2D_VERSION}, then "
                "--img2dataset-python .venv-bench/bin/python)",
                flush=True,
            )
    with (
        tempfile.TemporaryDirectory(prefix="bench-images-") as tmp,
        BenchServer(biggest, pictures, args.seed) as server,
    ):
        work = Path(tmp)
        print(
            f"{biggest} URLs on 127.0.0.1 ({len(pictures)} distinct JPEGs, "
            f"{server.expected_failures()} answer 404/500), {args.threads} threads, "
            f"retries {args.retries} on both sides, {os.cpu_count()} CPUs",
            flush=True,
        )
        print(HEADER, flush=True)
        runs: dict[str, list[dict]] = {}  # tool -> one result per repetition
        jobs = []  # (name, tool label, urls, how to run it with (server, urls, threads, ...))
        if python is not None:
            run_i2d = run_img2dataset
            jobs.append(("img2dataset", "img2dataset", biggest, lambda a: run_i2d(python, *a)))
        if args.baseline_src is not None:
            src = args.baseline_src.resolve()
            jobs.append(
                (
                    "alien-hotels baseline",
                    "alien-hotels baseline",
                    biggest,
                    lambda a: run_ours(*a, src=src),
                )
            )
        for size in sizes:
            jobs.append(
                (
                    f"alien-hotels {size}",
                    "alien-hotels",
                    size,
                    lambda a: run_ours(*a, args.ours_prefix),
                )
            )
        for rep in range(args.repeat):
            # The tools in turn, every other repetition in reverse order: a load that drifts
            # during a repetition (a shared machine) favours neither.
            for name, label, n, job in jobs if rep % 2 == 0 else jobs[::-1]:
                r = job((server, n, args.threads, args.retries, work))
                runs.setdefault(name, []).append(r)
                report(label, n, r)
    base = runs.get("img2dataset")
    for name in ("alien-hotels baseline", f"alien-hotels {biggest}"):
        if base is not None and name in runs:
            # Ratios within each repetition (same load), then their median.
            pairs = list(zip(runs[name], base, strict=True))
            ratio = {
                key: statistics.median(o[key] / b[key] for o, b in pairs)
                for key in ("images_per_s", "cpu_ms_per_image", "peak_rss_mb")
            }
            times = f" (median of {len(pairs)})" if len(pairs) > 1 else ""
            print(
                f"{name.removesuffix(f' {biggest}')} / img2dataset{times}: "
                f"images/s x{ratio['images_per_s']:.2f}, "
                f"CPU per image x{ratio['cpu_ms_per_image']:.2f}, "
                f"peak RSS x{ratio['peak_rss_mb']:.2f} (goal: >= 1, <= 1)",
                flush=True,
            )
    if args.scale:
        print_scaling(sizes, [runs[f"alien-hotels {n}"][-1] for n in sizes])


def print_scaling(sizes: list[int], runs: list[dict]) -> dict:
    """Least-squares lines through (URLs, wall s / CPU s / peak MiB); the slope is the cost per
    URL at steady state, the line at Hotels-50K's size the estimate."""
    fits = {}
    for key, unit in (("call_s", "s"), ("cpu_s", "CPU s"), ("peak_rss_mb", "MiB")):
        ys = [r[key] for r in runs]
        n = len(sizes)
        mx, my = sum(sizes) / n, sum(ys) / n
        slope = sum((x - mx) * (y - my) for x, y in zip(sizes, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in sizes
        )
        at = my + slope * (HOTELS50K_URLS - mx)
        fits[key] = {"per_url": slope, "at_hotels50k": at}
        print(
            f"scale {key}: "
            + ", ".join(f"{y:.1f} at {x}" for x, y in zip(sizes, ys, strict=True))
            + f" (x{ys[-1] / ys[0]:.2f} for x{sizes[-1] / sizes[0]:.1f} URLs); "
            f"per 1000 URLs {1000 * slope:.2f} {unit}; "
            f"linear at {HOTELS50K_URLS:,}: {at:,.0f} {unit}",
            flush=True,
        )
    print("SCALE " + json.dumps({"sizes": sizes, "fits": fits}), flush=True)
    return fits


if __name__ == "__main__":
    main()
