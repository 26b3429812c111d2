#!/usr/bin/env bash
# The container image: `make image` (build) and `make image-check` (build on a Debian base made
# here, then run the README's demo inside it on a fresh clone). README "GPU runs: the container".
#
#   deploy/image.sh build   docker build where a Docker daemon answers, else buildah bud
#                           (chroot isolation: no daemon, works inside containers and sandboxes)
#   deploy/image.sh check   the build on BASE (default: Debian trixie made with mmdebstrap), then
#                           inside the image: import the whole stack, `dvc pull -r bundled data.dvc`,
#                           `dvc repro`, and the metrics must equal the ones tracked in git
#
# Settings (environment; the Makefile passes its variables of the same names):
#   IMAGE      the tag to build (default alien-hotels; the check uses alien-hotels:check)
#   BASE       base image; empty: the Dockerfile's CUDA base (build), a Debian trixie base made
#              here with mmdebstrap and stored as localhost/debian:trixie (check)
#   CA_BUNDLE  CA bundle handed to apt and pip as build secret ca_bundle (default: the host's
#              /etc/ssl/certs/ca-certificates.crt where it exists); mounted for one RUN, not stored
#   PIP_CONF   a pip config file handed to pip as build secret pip_conf (mirror, extra index,
#              credentials); not stored. The host's own pip config is not passed by default: it
#              may name paths (file:// indexes, find-links) that only exist on the host.
#   BUILDER    docker or buildah (default: docker where its daemon answers; the check: buildah)
#   REPO       the check's project: a git repository cloned afresh (default: this one's HEAD)
#   CHECK_FREE_GB  GiB the check wants free where buildah stores images, and in TMPDIR (the
#              clone, buildah's temporary files), before it starts (default 30: it peaked at
#              27.5 GiB for a 7.59 GB image); 0 skips the test
#   KEEP_IMAGE 1: the check keeps its image (alien-hotels:check, ~7.5 GB); by default it removes
#              it, so every check is a full build and leaves only the small base behind
#
# The check needs root (buildah's storage, chroot isolation) and installs buildah and mmdebstrap
# with apt-get when missing. `podman run` is not used: where the kernel refuses setrlimit (some
# sandboxes) it fails, `buildah run --isolation chroot` does not.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
IMAGE="${IMAGE:-}"
BASE="${BASE:-}"
PIP_CONF="${PIP_CONF:-}"
if [ -z "${CA_BUNDLE+set}" ] && [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
fi
CA_BUNDLE="${CA_BUNDLE:-}"
DEBIAN_SUITE="${DEBIAN_SUITE:-trixie}"
CHECK_BASE="localhost/debian:$DEBIAN_SUITE"

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

have_docker() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# apt-get install the missing tools (as root, else through sudo), as `make setup-browser` does.
need_tools() {
    local missing=() tool sudo=
    for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]}; as root: apt-get install ${missing[*]}"
        sudo=sudo
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get: install them by hand"
    log "installing ${missing[*]} (apt-get)"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

build() {
    local image="${IMAGE:-alien-hotels}" args=()
    [ -n "$BASE" ] && args+=(--build-arg "BASE=$BASE")
    if [ -n "$CA_BUNDLE" ]; then
        [ -s "$CA_BUNDLE" ] || die "CA_BUNDLE=$CA_BUNDLE: no such file"
        args+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
    fi
    if [ -n "$PIP_CONF" ]; then
        [ -s "$PIP_CONF" ] || die "PIP_CONF=$PIP_CONF: no such file"
        args+=(--secret "id=pip_conf,src=$PIP_CONF")
    fi
    local builder="${BUILDER:-}"
    if [ -z "$builder" ]; then
        if have_docker; then builder=docker; else builder=buildah; fi
    fi
    if [ "$builder" = docker ]; then
        log "docker build -t $image ${BASE:+(BASE=$BASE)}"
        DOCKER_BUILDKIT=1 docker build "${args[@]}" -t "$image" "$here"
    else
        command -v buildah >/dev/null 2>&1 \
            || die "neither a Docker daemon nor buildah: install docker, or as root: apt-get install buildah"
        log "buildah bud -t $image ${BASE:+(BASE=$BASE)}"
        buildah bud --isolation chroot --layers="${LAYERS:-true}" "${args[@]}" -t "$image" "$here"
    fi
}

# A Debian base image from Debian's own packages (no image registry needed), unless stored already.
debian_base() {
    if buildah inspect --type image "$CHECK_BASE" >/dev/null 2>&1; then
        log "base $CHECK_BASE: already stored (buildah rmi it to make it anew)"
        return
    fi
    local tmp ctr
    tmp="$(mktemp -d)"
    log "base $CHECK_BASE: mmdebstrap --variant=minbase $DEBIAN_SUITE"
    mmdebstrap --quiet --variant=minbase --include=ca-certificates "$DEBIAN_SUITE" "$tmp/base.tar"
    ctr="$(buildah from scratch)"
    buildah add --quiet "$ctr" "$tmp/base.tar" / >/dev/null
    buildah config --cmd /bin/bash "$ctr"
    buildah commit --quiet --rm "$ctr" "$CHECK_BASE" >/dev/null
    rm -rf "$tmp"
}

# What runs inside the image: the stack imports, the README's demo, the metrics against git.
# shellcheck disable=SC2016
INSIDE='set -eu
cd /work
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python - <<"EOF"
import importlib
import sys
for name in ["torch", "torchvision", "diffusers", "transformers", "clip_interrogator", "open_clip",
             "ray", "dvc", "alien_hotels.cli"]:
    mod = importlib.import_module(name)
    version = getattr(mod, "__version__", "")
    print(f"import {name:18} {version:12} {mod.__file__}")
print("python", sys.version.split()[0])
EOF
echo "--- lean: no pip cache, no compiler, no build secret left behind"
left=$(find /root/.cache/pip /cache/pip /run/secrets /etc/apt/apt.conf.d/99build-ca \
    -mindepth 0 ! -type d 2>/dev/null || true)
tools=$(command -v gcc cc c++ make || true)
if [ -n "$left$tools" ]; then echo "left behind: $left $tools"; exit 1; fi
echo "lean: ok"
echo "--- sizes: the venv, and in it the CUDA libraries torch brings, torch, triton:"
du -sh /opt/venv
du -sh /opt/venv/lib/python3*/site-packages/nvidia /opt/venv/lib/python3*/site-packages/torch \
    /opt/venv/lib/python3*/site-packages/triton
start=$(date +%s)
dvc pull -q -r bundled data.dvc
dvc repro
alien-hotels summary
echo "demo_seconds=$(( $(date +%s) - start ))"
echo "--- git status after the demo (tracked files the run changed):"
git status --short --untracked-files=no
echo "--- metrics/ against git HEAD:"
if git diff --exit-code -- metrics/; then echo "metrics: equal to HEAD"; else
    echo "metrics: differ from HEAD (above)"; exit 1; fi
'

# The check needs room for the image's layer twice over (the container's copy and the committed
# one) plus the tarball buildah writes between them: 27.5 GiB at its peak for a 7.59 GB image
# (2026-12-07, all on one filesystem). With less, the build dies after minutes with "no space
# left on device" while committing the last layer; this says so before the first one.
need_space() {
    local need_gb="${CHECK_FREE_GB:-30}" path dir free_kb
    case "$need_gb" in '' | *[!0-9]*) die "CHECK_FREE_GB=$need_gb: a whole number of GiB (0 skips the test)" ;; esac
    [ "$need_gb" -gt 0 ] || return 0
    for path in "$@"; do
        dir="$path"  # the storage may not exist yet: its disk is the nearest folder's above
        while [ ! -d "$dir" ]; do dir="$(dirname "$dir")"; done
        free_kb="$(df -Pk "$dir" | awk 'NR == 2 {print $4}')"
        [ "$free_kb" -ge $((need_gb * 1024 * 1024)) ] || die "$path has $((free_kb / 1024 / 1024)) GiB" \
            "free; the check needs about $need_gb GiB there (it peaked at 27.5 GiB: the image's" \
            "layers and the tarball buildah writes committing them). Free some (what stopped" \
            "builds left: buildah containers, buildah rm, buildah rmi --prune; old clones and" \
            "caches), set TMPDIR to a roomier disk, or CHECK_FREE_GB=0 to try anyway"
    done
}

WORK= CTR= RMI=
cleanup() {
    [ -z "$CTR" ] || buildah rm "$CTR" >/dev/null 2>&1 || true
    [ -z "$RMI" ] || [ "${KEEP_IMAGE:-0}" = 1 ] || buildah rmi "$RMI" >/dev/null 2>&1 || true
    [ -z "$WORK" ] || rm -rf "$WORK"
}

check() {
    [ "$(id -u)" = 0 ] || die "the check needs root (buildah storage, chroot isolation)"
    need_tools buildah mmdebstrap git
    # buildah's image storage, and the folder for the clone and buildah's temporary files
    need_space "$(buildah info --format '{{.store.GraphRoot}}' 2>/dev/null \
        || echo /var/lib/containers/storage)" "${TMPDIR:-/tmp}"
    local image="${IMAGE:-alien-hotels:check}" repo="${REPO:-$here}" work ctr t0 t1 build_s size
    local base_s=0
    trap cleanup EXIT
    trap 'exit 130' INT  # stopped: the EXIT trap still cleans up
    trap 'exit 143' TERM
    work="$(mktemp -d "${TMPDIR:-/tmp}/alien-hotels-image-check.XXXXXX")"
    WORK="$work"
    # buildah's temporary files (the layer tarballs, as large as the image) go in it too, so they
    # go with it when a check is stopped: in /var/tmp, a stopped CI run left 14 GB behind
    mkdir "$work/tmp"
    export TMPDIR="$work/tmp"
    if [ -z "$BASE" ]; then
        t0=$(date +%s)
        debian_base
        base_s=$(($(date +%s) - t0))
        BASE="$CHECK_BASE"
    fi
    # buildah whatever else is here (the image must be in buildah's storage to run it), and no
    # layer cache: the build time is a full build's
    t0=$(date +%s)
    IMAGE="$image" BUILDER=buildah LAYERS=false build
    RMI="$image"
    t1=$(date +%s)
    build_s=$((t1 - t0))
    size="$(buildah images --format '{{.Size}}' "$image" | head -n 1)"

    git clone -q "$repo" "$work/project"
    ctr="$(buildah from --quiet "$image")"
    CTR="$ctr"
    log "running the demo in $image on a fresh clone of $repo ($(git -C "$work/project" rev-parse --short HEAD))"
    t0=$(date +%s)
    buildah run --isolation chroot -v "$work/project:/work" "$ctr" -- bash -c "$INSIDE" \
        | tee "$work/inside.log"
    t1=$(date +%s)
    echo "--- metrics compared (metrics/*.json, from the run in the image, equal to git HEAD):"
    local f
    for f in "$work"/project/metrics/*.json; do
        echo "$(basename "$f"): $(tr -s ' \n' ' ' < "$f")"
    done
    echo "=== image-check passed: image $image on ${BASE}"
    echo "image size: $size"
    echo "build time: ${build_s}s (full build, no layer cache; the base: ${base_s}s)"
    if [ "${KEEP_IMAGE:-0}" = 1 ]; then echo "image kept: $image"; else
        echo "image removed at exit (KEEP_IMAGE=1 keeps it)"; fi
    echo "demo time:  $(sed -n 's/^demo_seconds=//p' "$work/inside.log")s (dvc pull + dvc repro + summary; $((t1 - t0))s with the imports and the container start)"
}

case "${1:-}" in
build) build ;;
check) check ;;
*) die "usage: $0 build|check" ;;
esac
