"""Atomic outputs: a process SIGKILLed mid-write leaves a `.<name>.<random>.tmp`; the next run
removes it (the next write of that target, or the stage that owns the folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd

from alien_hotels.common import PARTIAL_WRITE, remove_partial_writes, write_json
from alien_hotels.stages import edit as edit_stage
from conftest import compose, subprocess_env

# Starts an atomic write of argv[1], writes half of it, says so, and waits to be killed.
KILLED_WRITER = """
import sys, time
from alien_hotels.common import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a PNG")
    print("writing", flush=True)
    time.sleep(600)
"""


def killed_mid_write(target: Path) -> Path:
    """SIGKILL a real process inside `atomic_path(target)`; return the temporary it left."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.stdout.close()
    (left,) = [
        p
        for p in target.parent.iterdir()
        if (m := PARTIAL_WRITE.match(p.name)) and m["target"] == target.name
    ]
    assert not target.exists()
    return left


def test_the_next_write_of_a_target_removes_its_leftover(tmp_path: Path):
    target = tmp_path / "metrics" / "m.json"
    left = killed_mid_write(target)
    other = killed_mid_write(tmp_path / "metrics" / "other.json")
    write_json({"ok": 1}, target)
    assert target.read_text() == '{\n  "ok": 1\n}\n'
    assert not left.exists()
    assert other.exists()  # another target's leftover: its own next write (or stage) removes it


def test_remove_partial_writes_touches_only_leftovers(tmp_path: Path):
    sub = tmp_path / "sub"
    sub.mkdir()
    leftovers = [tmp_path / ".1.png.ab_3x9z0.tmp", sub / ".2.png.k2j4h5g6.tmp"]
    keep = [tmp_path / "1.png", tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / ".x.tmp"]
    for path in leftovers + keep:
        path.write_bytes(b"")
    assert remove_partial_writes(tmp_path) == [leftovers[0]]
    assert leftovers[1].exists()
    assert remove_partial_writes(tmp_path, recursive=True) == [leftovers[1]]
    assert all(path.exists() for path in keep)
    assert remove_partial_writes(tmp_path / "absent") == []


def test_edit_stage_removes_a_killed_png_write(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("data/interim").mkdir(parents=True)
    pd.DataFrame({"image_id": [7], "path": [""], "status": ["missing"]}).to_csv(
        "data/interim/images.csv", index=False
    )
    left = killed_mid_write(tmp_path / "data/edited/neon/7.png")
    edit_stage.run(compose(), "neon")  # nothing to edit: no model is loaded
    assert not left.exists()
    assert list(Path("data/edited/neon").iterdir()) == []


def test_outputs_get_the_umask_mode_and_the_umask_is_never_touched(tmp_path, monkeypatch):
    """Outputs are 0666 less the umask, like any new file, without setting the umask to read
    it (a set umask is process-wide: another thread's new file would get mode 0666)."""
    calls = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
    old = real_umask(0o027)
    try:
        write_json({"a": 1}, tmp_path / "out.json")
    finally:
        real_umask(old)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o640
    assert calls == []
    assert not list(tmp_path.glob(".*.tmp"))
