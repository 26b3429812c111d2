"""Same bytes on every CPU: the text half's outputs under different OpenBLAS kernels.

    python -m benchmarks.check_bytes [--coretype Haswell] [--keep DIR]

Copies this working tree (what `git ls-files` lists, as a clone would have it) into a temporary
git+DVC repository, restores `data/raw` from the bundled remote, runs the pipeline up to `map`
once, then runs `features`, `cluster` and `map` again under each kernel setting:

* `as set`: the environment as it is (`OPENBLAS_CORETYPE` / `OPENBLAS_L2_SIZE` as this machine
  sets them, if it does);
* `unset`: both variables removed, so OpenBLAS picks the kernel for this CPU;
* `--coretype NAME` (repeatable): `OPENBLAS_CORETYPE=NAME` (a kernel this CPU can run).

It prints the kernels threadpoolctl reports for each setting and the md5 of each output, and
exits 1 when any output's bytes differ between settings. The tests never change these
variables; this is the check for `make demo` leaving `git status` clean on any x86-64 CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
OUTPUTS = [
    "data/processed/features.npz",
    "data/processed/cluster_labels.csv",
    "data/processed/clusters.csv",
    "reports/cluster_map.html",
    "reports/cluster_map.png",
    "metrics/features.json",
    "metrics/clustering.json",
    "metrics/map.json",
    "plots/elbow.csv",
    "reports/clusters.md",
]
# numpy, scipy and scikit-learn each load an OpenBLAS; list every one.
KERNELS = (
    "import numpy, scipy.linalg, sklearn.cluster, threadpoolctl; print(', '.join(sorted({"
    "f\"{i['internal_api']} {i.get('architecture')}\" for i in threadpoolctl.threadpool_info()"
    " if i['user_api'] == 'blas'})))"
)


def environment(change: dict[str, str | None]) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", "check-bytes")
        env.setdefault(f"GIT_{role}_EMAIL", "check-bytes@alien-hotels.invalid")
    for key, value in change.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result.stdout


def copy_tree(dest: Path) -> None:
    listed = sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT, {})
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    env = environment({})
    sh(["git", "init", "-q"], dest, env)
    sh(["git", "add", "-A"], dest, env)
    sh(["git", "commit", "-qm", "copy"], dest, env)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else "(missing)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coretype", action="append", default=[], help="also this kernel")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args()
    settings: dict[str, dict[str, str | None]] = {
        "as set": {},
        "unset": dict.fromkeys(VARIABLES),
    }
    for name in args.coretype:
        settings[f"OPENBLAS_CORETYPE={name}"] = {
            "OPENBLAS_CORETYPE": name,
            "OPENBLAS_L2_SIZE": None,
        }
    work = args.keep or Path(tempfile.mkdtemp(prefix="check-bytes-"))
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir()
    copy_tree(repo)
    env = environment({})
    env["PYTHONPATH"] = str(repo / "src")
    sh(["dvc", "pull", "-q", "-r", "bundled", "data.dvc"], repo, env)
    sh(["dvc", "repro", "-q", "map"], repo, env)  # sample .. room_types, once
    results: dict[str, dict[str, str]] = {}
    for label, change in settings.items():
        env = environment(change)
        env["PYTHONPATH"] = str(repo / "src")
        shown = {k: env.get(k, "(unset)") for k in VARIABLES}
        kernels = sh([sys.executable, "-c", KERNELS], repo, env).strip()
        print(f"== {label}: {shown}; threadpoolctl: {kernels}", flush=True)
        for stage in ("features", "cluster", "map"):
            sh(["alien-hotels", stage], repo, env)
        results[label] = {out: md5(repo / out) for out in OUTPUTS}
        for out, digest in results[label].items():
            print(f"   {digest}  {out}")
    differ = [out for out in OUTPUTS if len({r[out] for r in results.values()}) > 1]
    print("differ: " + (", ".join(differ) if differ else "none (same bytes under every kernel)"))
    if args.keep is None:
        shutil.rmtree(work)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
