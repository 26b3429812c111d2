# The full stack (text half + CLIP Interrogator + diffusers + Ray), running `dvc repro` with real
# models. Build it with `make image` (docker, else buildah; README "GPU runs: the container"):
# CUDA base by default, any Debian/Ubuntu base with BASE=, e.g. `make image BASE=debian:trixie`.
# Python is the base's python3: 3.12 on Ubuntu 24.04, 3.13 on Debian trixie (the project needs
# >= 3.11). Behind a proxy with its own CA, `make image` hands the host's CA bundle to apt and pip
# as a build secret (id ca_bundle), and a pip config (mirror, extra index) as secret pip_conf:
# both are mounted for one RUN only, never stored in a layer.
# Weights are not baked in: mount a cache volume at /cache and fill it once (needs internet)
# with the files every model of params.yaml needs (`--dry-run` lists them and their sizes first)
#   docker run --rm -v ah-cache:/cache -v "$PWD":/work alien-hotels alien-hotels models download
# then run the pipeline offline on a GPU machine, the project mounted at /work:
#   docker run --rm --gpus all -v ah-cache:/cache -v "$PWD":/work -e HF_HUB_OFFLINE=1 alien-hotels \
#     dvc exp run -S caption=clip_interrogator
ARG BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${BASE} AS os

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache \
    DVC_NO_ANALYTICS=1

# The distribution's archive replaces package versions; the base image tag pins the release.
# The CA secret (if given) is apt's CA for https sources (the CUDA repository) for this RUN only;
# world-readable (a CA bundle is public) since apt downloads as its unprivileged user _apt.
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca_bundle,mode=0444 \
    if [ -s /run/secrets/ca_bundle ]; then \
        echo 'Acquire::https::CAInfo "/run/secrets/ca_bundle";' > /etc/apt/apt.conf.d/99build-ca; \
    fi \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/* /etc/apt/apt.conf.d/99build-ca \
    && python3 -m venv /opt/venv \
    && git config --system --add safe.directory '*'

# The dependency list, made from pyproject.toml in a stage of its own: the pip layer below is
# keyed on this list's content, so editing pyproject.toml elsewhere (tool settings, test pins
# aside) does not reinstall torch.
FROM os AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['ml'] \
    + p['optional-dependencies']['ray']))" > /tmp/requirements.txt

# Only the dependencies go into the image, never a copy of src/: the container runs the project
# mounted at /work, the same code DVC hashes for the stages' deps. Every dependency is pinned (==)
# in pyproject.toml; torch's PyPI wheels bring their CUDA libraries. All are wheels except
# antlr4-python3-runtime (pure Python, built in pip's throwaway build environment): no compiler.
FROM os
COPY --from=requirements /tmp/requirements.txt /opt/venv/requirements.txt
RUN --mount=type=secret,id=ca_bundle --mount=type=secret,id=pip_conf \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi \
    && pip install --no-cache-dir -r /opt/venv/requirements.txt \
    && printf '#!/bin/sh\nexec python -m alien_hotels.cli "$@"\n' > /opt/venv/bin/alien-hotels \
    && chmod +x /opt/venv/bin/alien-hotels

ENV PYTHONPATH=/work/src
VOLUME ["/cache"]
WORKDIR /work
CMD ["dvc", "repro"]
