# The full stack (text half + CLIP Interrogator + diffusers + Ray) on CUDA, running `dvc repro` with real
# models. Weights are not baked in: mount a cache volume at /cache and fill it once (needs internet)
# with the files every model of params.yaml needs (`--dry-run` lists them and their sizes first)
#   docker run --rm -v ah-cache:/cache -v "$PWD":/work alien-hotels alien-hotels models download
# then run the pipeline offline on a GPU machine, the project mounted at /work:
#   docker run --rm --gpus all -v ah-cache:/cache -v "$PWD":/work -e HF_HUB_OFFLINE=1 alien-hotels \
#     dvc exp run -S caption=clip_interrogator
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache \
    DVC_NO_ANALYTICS=1

# Ubuntu's archive replaces package versions; the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && git config --system --add safe.directory '*'

# Only the dependencies go into the image, never a copy of src/: the container runs the project
# mounted at /work, the same code DVC hashes for the stages' deps. Every dependency is pinned (==)
# in pyproject.toml; torch's PyPI wheels bring their CUDA libraries.
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['ml'] \
    + p['optional-dependencies']['ray']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/pyproject.toml \
    && printf '#!/bin/sh\nexec python -m alien_hotels.cli "$@"\n' > /opt/venv/bin/alien-hotels \
    && chmod +x /opt/venv/bin/alien-hotels

ENV PYTHONPATH=/work/src
VOLUME ["/cache"]
WORKDIR /work
CMD ["dvc", "repro"]
