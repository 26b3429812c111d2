#!/usr/bin/env bash
# Profile of the fast chain's steps (issue 17, item 1): one command, under 3 minutes on one H100.
#
# `torch.profiler` over two chain steps of 8 images x 2048 candidates on ViT-L-14's text tower
# (random weights), float16 under autocast, in the `random` and `planted` image regimes: top
# operators by CUDA and CPU time, how busy the GPU was, the step split by fastchain's ranges.
# Runs on CPU too (float32, smaller defaults: the host side and the forward's CPU cost).
#
# Needs the project's ml extra installed (`make setup-full`, or the Docker image); no network.
#   bash benchmarks/gpu_profile.sh                  # CUDA if torch sees one, else CPU
#   bash benchmarks/gpu_profile.sh --device cpu --tiny --candidates 64    # smoke test
# Other arguments go to benchmarks/gpu_profile.py (--candidates, --images, --regimes, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
exec timeout "${TIMEOUT:-600}" "$PYTHON" -W ignore -m benchmarks.gpu_profile "$@"
