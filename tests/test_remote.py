"""Sharing through a real S3-compatible remote: moto's server on 127.0.0.1, started here.

One clone runs the pipeline (with local images, so `data/images` has real files) and pushes;
a fresh `git clone` pulls and must need nothing recomputed: `dvc status` clean, `dvc repro`
runs no stage, and every tracked file is byte-identical.
"""

from __future__ import annotations

import filecmp
from pathlib import Path

import pandas as pd
import pytest

from alien_hotels.testing.imageserver import make_image
from conftest import copy_project, run

pytestmark = pytest.mark.slow

BUCKET = "alien-hotels-test"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3_endpoint():
    import boto3  # installed with dvc[s3]
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    finally:
        server.stop()


def _use_endpoint(repo: Path, endpoint: str) -> None:
    """Point the committed default remote at the test bucket, in .dvc/config.local only."""
    run(["dvc", "remote", "modify", "--local", "storage", "url", f"s3://{BUCKET}/store"], repo)
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", endpoint], repo)


def _tracked_outputs(repo: Path) -> list[Path]:
    roots = ["data/raw", "data/interim", "data/images", "data/processed", "reports", "metrics"]
    return sorted(p.relative_to(repo) for r in roots for p in (repo / r).rglob("*") if p.is_file())


def test_push_then_pull_into_a_fresh_clone(tmp_path: Path, s3_endpoint):
    endpoint, client = s3_endpoint
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    a = copy_project(tmp_path / "a")
    run(["dvc", "pull", "-q", "-r", "bundled", "data.dvc"], a)

    # A few of the bundled sample's photos in the dataset's local tree, tracked with data/raw.
    sample = pd.read_csv(a / "data/bundled/hotels_sample.csv")
    photos = sample[sample["downloaded"]].head(5)
    for n, row in enumerate(photos.itertuples()):
        path = (
            a
            / "data/raw/hotels50k/images/train"
            / str(row.chain_id)
            / str(row.hotel_id)
            / row.source
            / row.image_name
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_image(n, size=(640, 480)))
    run(["dvc", "commit", "-f", "-q", "data.dvc"], a)
    # Up to the map: the edit stages would need Stable Diffusion weights for these photos.
    run(["dvc", "repro", "map"], a)
    manifest = pd.read_csv(a / "data/interim/images.csv")
    assert (manifest["status"] == "ok").sum() == 5
    run([*git, "add", "-A"], a)
    run([*git, "commit", "-qm", "pipeline run with local images"], a)

    _use_endpoint(a, endpoint)
    run(["dvc", "push", "--with-deps", "map", "data.dvc"], a, **CREDENTIALS)
    stored = client.list_objects_v2(Bucket=BUCKET, Prefix="store/")
    assert stored["KeyCount"] > 10

    b = tmp_path / "b"
    run(["git", "clone", "-q", str(a), str(b)], tmp_path)
    assert not (b / "data/images").exists()
    _use_endpoint(b, endpoint)
    run(["dvc", "pull", "--with-deps", "map", "data.dvc"], b, **CREDENTIALS)

    status = run(["dvc", "status", "--with-deps", "map", "data.dvc"], b, **CREDENTIALS)
    assert "up to date" in status.stdout, status.stdout
    repro = run(["dvc", "repro", "map"], b, **CREDENTIALS)
    assert "Running stage" not in repro.stdout, repro.stdout

    files = _tracked_outputs(a)
    assert files == _tracked_outputs(b)
    assert sum(1 for f in files if f.parts[:2] == ("data", "images")) == 5
    _match, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
