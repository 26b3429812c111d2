"""Model weights for captioning and editing: where they are, whether they are all there, how to
fetch them, and the device, dtype and threads they run with.

* A model is a hub id, looked up in the Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`),
  or a local path. Either way it resolves to a folder (or file) on disk that is checked file by
  file, configs AND weights, reading the disk only, and the loaders read that folder: what runs
  is what was checked, and a check never touches the network.
* Nothing is downloaded unless asked: `alien-hotels models download`, or a stage with
  `allow_download=true` while `HF_HUB_OFFLINE` is unset.
* A download fetches the minimal file set: configs, tokenizer and processor files, and one set
  of weights per component (safetensors, else .bin; the default precision, no fp16/ema variants,
  no checkpoints of other frameworks, no `safety_checker`, which every pipeline loads as None).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alien_hotels.common import StageError

log = logging.getLogger(__name__)

# diffusers: model_index.json + component folders; transformers: a save_pretrained folder with
# model and processor; open_clip: a weights file (hub) or local-dir folder / checkpoint file;
# files: named files of a repo put into a plain folder (label embeddings).
Layout = Literal["diffusers", "transformers", "open_clip", "files"]
WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
WEIGHT_EXTS = (".safetensors", ".bin")
SKIPPED_COMPONENTS = {"safety_checker"}
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
OPEN_CLIP_CHECKPOINTS = ("*.safetensors", "*.bin", "*.pth")
MARKER = {"diffusers": "model_index.json", "transformers": "config.json"}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )


def may_download(allow_download: bool) -> bool:
    return allow_download and not hub_offline()


def hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub resolves it, read from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def looks_local(source: str) -> bool:
    """Hub ids are `name` or `owner/name`; paths start with . / ~ or have more parts."""
    return (
        source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or Path(source).expanduser().exists()
    )


@dataclass(frozen=True)
class ModelRef:
    """One model a stage needs, named by the config key that chose it."""

    key: str  # e.g. edit.recipes.neon.model_id
    source: str  # hub repo id or local path
    layout: Layout
    files: tuple[str, ...] = ()  # open_clip: candidate weight files; files: every file needed
    dest: str | None = None  # files: the plain folder they go to (not the hub cache)
    required: bool = True  # False: the stage runs without it (optional score models)

    @property
    def local(self) -> bool:
        return self.layout != "files" and looks_local(self.source)


@dataclass(frozen=True)
class Located:
    ref: ModelRef
    path: Path  # the folder (or file) the loader reads
    label: str  # what runs: `<repo>@<commit>` from the cache, or the resolved local path


class MissingWeights(Exception):
    """A model's folder or cache entry lacks files; the message says which."""


# -- presence checks (disk only) ---------------------------------------------------------------


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _weights_problem(folder: Path, stems: Iterable[str]) -> str | None:
    """None when `folder` holds a complete weights set (single file or every indexed shard)."""
    stems = tuple(stems)
    for stem in stems:
        for ext in WEIGHT_EXTS:
            if _nonempty(folder / f"{stem}{ext}"):
                return None
            index = folder / f"{stem}{ext}.index.json"
            if index.is_file():
                shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
                missing = sorted(s for s in shards if not _nonempty(folder / s))
                if shards and not missing:
                    return None
                return f"{folder}: shards listed in {index.name} are missing: {', '.join(missing)}"
    expected = " or ".join(f"{stems[0]}{ext}" for ext in WEIGHT_EXTS)
    return f"{folder}: no weights file (expected {expected})"


def _tokenizer_problem(folder: Path) -> str | None:
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if (
        "tokenizer.json" in names
        or {"vocab.json", "merges.txt"} <= names
        or "vocab.txt" in names
        or any(n.endswith(".model") for n in names)
    ):
        return None
    return f"{folder}: no tokenizer files (tokenizer.json, vocab.json + merges.txt or vocab.txt)"


def _diffusers_problems(folder: Path) -> list[str]:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return [f"{folder}: no model_index.json (not a diffusers pipeline folder)"]
    problems = []
    for name, spec in json.loads(index_path.read_text()).items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        if name in SKIPPED_COMPONENTS:
            continue
        sub = folder / name
        if not sub.is_dir():
            problems.append(f"{folder}: component folder {name}/ is missing")
        elif (sub / "config.json").is_file():
            problems.append(_weights_problem(sub, WEIGHT_STEMS))
        elif "tokenizer" in name:
            problems.append(_tokenizer_problem(sub))
        elif not any(sub.glob("*.json")):
            problems.append(f"{sub}: no config file")
    return [p for p in problems if p]


def _transformers_problems(folder: Path) -> list[str]:
    if not (folder / "config.json").is_file():
        return [f"{folder}: no config.json (expected a save_pretrained folder)"]
    problems = [_weights_problem(folder, WEIGHT_STEMS[1:]), _tokenizer_problem(folder)]
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        problems.append(f"{folder}: no {' or '.join(PROCESSOR_FILES)} (the image processor)")
    return [p for p in problems if p]


def _open_clip_problems(path: Path) -> list[str]:
    if path.is_file():
        return [] if _nonempty(path) else [f"{path}: empty checkpoint file"]
    if not path.is_dir():
        return [f"{path} does not exist"]
    problems = []
    if not (path / "open_clip_config.json").is_file():
        problems.append(f"{path}: no open_clip_config.json")
    if not any(_nonempty(p) for pattern in OPEN_CLIP_CHECKPOINTS for p in path.glob(pattern)):
        problems.append(
            f"{path}: no weights file ({', '.join(OPEN_CLIP_CHECKPOINTS)}); open_clip would "
            "silently run a randomly initialised model"
        )
    return problems


def folder_problems(path: Path, layout: Layout) -> list[str]:
    """What is missing for `layout` at `path` (empty: complete)."""
    if layout == "open_clip":
        return _open_clip_problems(path)
    if not path.is_dir():
        return [f"{path} does not exist"]
    if layout == "diffusers":
        return _diffusers_problems(path)
    return _transformers_problems(path)


def _cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir())
    return Path(found) if isinstance(found, str) else None


def locate(ref: ModelRef) -> Located:
    """The folder or file `ref` loads from; raises MissingWeights. Reads the disk only."""
    if ref.local:
        path = Path(ref.source).expanduser().resolve()
        problems = folder_problems(path, ref.layout)
        if problems:
            raise MissingWeights("; ".join(problems))
        return Located(ref, path, str(path))
    cache = hub_cache_dir()
    if ref.layout == "open_clip":
        for name in ref.files:
            found = _cached(ref.source, name)
            if found is not None and _nonempty(found):
                return Located(ref, found, f"{ref.source}@{found.parent.name}")
        raise MissingWeights(f"{' or '.join(ref.files)} not in the Hugging Face cache {cache}")
    if ref.layout == "files":
        folder = Path(ref.dest or cache)
        missing = [f for f in ref.files if not _nonempty(folder / f)]
        if missing:
            raise MissingWeights(f"{folder} lacks {', '.join(missing)}")
        return Located(ref, folder, str(folder))
    marker = _cached(ref.source, MARKER[ref.layout])
    if marker is None:
        raise MissingWeights(f"not in the Hugging Face cache {cache}")
    snapshot = marker.parent
    problems = folder_problems(snapshot, ref.layout)
    if problems:
        raise MissingWeights("incomplete in the Hugging Face cache: " + "; ".join(problems))
    return Located(ref, snapshot, f"{ref.source}@{snapshot.name}")


def require(refs: Iterable[ModelRef], section: str, hint: str) -> dict[str, Located]:
    """Locate every ref; one StageError listing every missing required model. Optional ones
    that are missing are left out of the result (with a warning)."""
    found: dict[str, Located] = {}
    problems, skipped = [], []
    for ref in refs:
        try:
            found[ref.key] = locate(ref)
        except MissingWeights as exc:
            (problems if ref.required else skipped).append(f"{ref.key}={ref.source}: {exc}")
    for line in [] if problems else skipped:
        log.warning("%s; running without it", line)
    if problems:
        offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
        raise StageError(
            f"{section}: model weights not available{offline}:\n  - "
            + "\n  - ".join(problems)
            + "\n"
            + hint
        )
    return found


def download_hint(section: str) -> str:
    return (
        "On a machine with internet run `alien-hotels models download` (it fetches what "
        f"params.yaml needs into the Hugging Face cache, here {hub_cache_dir()}; copy it or "
        f"mount it as HF_HOME), or set {section}.allow_download=true, or point the key at a "
        "local folder written with save_pretrained"
    )


def ensure(refs: list[ModelRef], section: str, allow_download: bool) -> dict[str, Located]:
    """`require`, after fetching what is missing when downloads are allowed."""
    if may_download(allow_download):
        missing = []
        for ref in refs:
            try:
                locate(ref)
            except MissingWeights:
                if not ref.local:
                    missing.append(ref)
        if missing:
            log.info("%s: downloading %d missing model(s)", section, len(missing))
            download(plan(missing))
    return require(refs, section, download_hint(section))


# -- the download plan (metadata from the hub, no weights) ------------------------------------


@dataclass(frozen=True)
class Planned:
    """What `models download` fetches for one source (several keys may share it)."""

    keys: tuple[str, ...]
    ref: ModelRef
    files: tuple[tuple[str, int | None], ...]  # (path in the repo, size in bytes)
    present: Located | None = None  # already complete on disk: nothing to fetch

    @property
    def size(self) -> int:
        return sum(size or 0 for _, size in self.files)

    @property
    def dest(self) -> str:
        return self.ref.dest or str(hub_cache_dir())


def _best_weights(files: dict[str, int | None], folder: str, stems: Iterable[str]) -> list[str]:
    """One weights set in `folder/`: a single file, else an index and its shards."""
    prefix = f"{folder}/" if folder else ""
    for stem in stems:
        for ext in WEIGHT_EXTS:
            if f"{prefix}{stem}{ext}" in files:
                return [f"{prefix}{stem}{ext}"]
            index = f"{prefix}{stem}{ext}.index.json"
            if index in files:
                shard = re.compile(re.escape(f"{prefix}{stem}") + r"-\d+-of-\d+" + re.escape(ext))
                return [index, *sorted(f for f in files if shard.fullmatch(f))]
    return []


def _small_files(files: dict[str, int | None], folder: str) -> list[str]:
    """Configs, tokenizer and processor files directly in `folder/` (not weight indexes)."""
    prefix = f"{folder}/" if folder else ""
    out = []
    for name in files:
        if not name.startswith(prefix) or "/" in name[len(prefix) :]:
            continue
        if name.endswith((".json", ".txt", ".model")) and not name.endswith(".index.json"):
            out.append(name)
    return out


def select_files(ref: ModelRef, files: dict[str, int | None]) -> list[str]:
    """The minimal files of a repo listing (path -> size) that `ref`'s loader needs."""
    if ref.layout == "open_clip":
        return next(([f] for f in ref.files if f in files), [])
    if ref.layout == "files":
        return [f for f in ref.files if f in files]
    if ref.layout == "transformers":
        return sorted(_small_files(files, "") + _best_weights(files, "", WEIGHT_STEMS[1:]))
    folders = sorted({f.split("/", 1)[0] for f in files if f.count("/") == 1})
    out = ["model_index.json"] if "model_index.json" in files else []
    for folder in folders:
        if folder in SKIPPED_COMPONENTS:
            continue
        out += _small_files(files, folder) + _best_weights(files, folder, WEIGHT_STEMS)
    return sorted(out)


def repo_listing(repo: str) -> dict[str, int | None]:
    """Every file of a hub repo with its size (one metadata request, no download)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    return {
        item.path: item.size
        for item in HfApi().list_repo_tree(repo, recursive=True)
        if isinstance(item, RepoFile)
    }


def plan(refs: Iterable[ModelRef]) -> list[Planned]:
    """One entry per distinct source; complete ones are marked present (no network for them).
    Raises StageError naming the model when the hub cannot list a repo or lacks files."""
    by_source: dict[tuple[str, str, str | None], list[ModelRef]] = {}
    for ref in refs:
        by_source.setdefault((ref.source, ref.layout, ref.dest), []).append(ref)
    out = []
    for group in by_source.values():
        ref, keys = group[0], tuple(r.key for r in group)
        try:
            out.append(Planned(keys, ref, (), locate(ref)))
            continue
        except MissingWeights as exc:
            if ref.local:
                raise StageError(f"{', '.join(keys)}={ref.source}: {exc}") from None
        try:
            out.append(_plan_hub(ref, keys))
        except StageError as exc:
            if ref.required:
                raise
            log.warning("%s; skipped (optional)", exc)
    return out


def _plan_hub(ref: ModelRef, keys: tuple[str, ...]) -> Planned:
    if hub_offline():
        raise StageError(f"{', '.join(keys)}: cannot list {ref.source}, HF_HUB_OFFLINE is set")
    try:
        listing = repo_listing(ref.source)
    except Exception as exc:  # network, auth, unknown repo: name the model
        raise StageError(
            f"{', '.join(keys)}: cannot list {ref.source} on the hub: {type(exc).__name__}: {exc}"
        ) from None
    chosen = select_files(ref, listing)
    lacking = [f for f in ref.files if f not in listing] if ref.layout == "files" else []
    if not chosen or lacking:
        raise StageError(
            f"{', '.join(keys)}: the hub repo {ref.source} has no "
            f"{', '.join(lacking) or 'weights this loader can read'}"
        )
    return Planned(keys, ref, tuple((f, listing[f]) for f in chosen))


def download(entries: list[Planned]) -> list[Path]:
    """Fetch the planned files (resumable: huggingface_hub keeps partial blobs)."""
    from huggingface_hub import snapshot_download

    fetched = []
    for entry in entries:
        if entry.present is not None or not entry.files:
            continue
        names = [name for name, _ in entry.files]
        if entry.ref.layout == "files":
            path = snapshot_download(entry.ref.source, allow_patterns=names, local_dir=entry.dest)
        else:
            path = snapshot_download(entry.ref.source, allow_patterns=names, cache_dir=entry.dest)
        fetched.append(Path(path))
        try:  # what was fetched must pass the same check the stages run
            locate(entry.ref)
        except MissingWeights as exc:
            raise StageError(f"{', '.join(entry.keys)}: {entry.ref.source}: {exc}") from None
    return fetched


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def describe(entries: list[Planned]) -> list[str]:
    """Lines for `models download --dry-run`: each model's files, sizes and the total."""
    lines = []
    for entry in entries:
        head = f"{', '.join(entry.keys)}: {entry.ref.source}"
        if entry.present is not None:
            lines.append(f"{head}: already complete at {entry.present.path}")
            continue
        lines.append(f"{head} -> {entry.dest}")
        lines += [f"    {name}  {human_size(size)}" for name, size in entry.files]
        lines.append(f"    {len(entry.files)} files, {human_size(entry.size)}")
    todo = [e for e in entries if e.present is None]
    total = sum(e.size for e in todo)
    lines.append(
        f"total: {len(todo)} model(s) to fetch, {sum(len(e.files) for e in todo)} files, "
        f"{human_size(total)} ({len(entries) - len(todo)} already complete)"
    )
    return lines


# -- device, dtype, threads ---------------------------------------------------------------------


def resolve_device(device: str, dtype: str, section: str) -> tuple[str, str]:
    """(device, dtype name) with `auto` resolved: cuda, then mps, then cpu; float16 on cuda,
    float32 elsewhere. float16 on the CPU is refused: slow, and some ops have no kernels."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise StageError(f"{section}.device=cuda but torch sees no CUDA device; use auto or cpu")
    elif device == "mps" and not mps_ok:
        raise StageError(f"{section}.device=mps but torch sees no MPS device; use auto or cpu")
    if dtype == "auto":
        dtype = "float16" if device == "cuda" else "float32"
    if dtype == "float16" and device == "cpu":
        raise StageError(
            f"{section}.dtype=float16 needs a GPU (cuda or mps); use auto or float32 on the CPU"
        )
    return device, dtype


def set_torch_threads(n_jobs: int) -> None:
    """Intra-op threads of torch: its default (one per core) oversubscribes a shared machine
    and made small edits ~10x slower than one thread (docs/design/performance.md)."""
    import torch

    if torch.get_num_threads() != n_jobs:
        torch.set_num_threads(n_jobs)
