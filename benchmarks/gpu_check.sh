#!/usr/bin/env bash
# GPU check of the fast flavor chain (issue 11): one command, under 5 minutes on one H100.
#
# Builds the real-size random-weight models on CUDA (BLIP-large, ViT-L-14; label tables reduced
# to ~2,900 phrases) and runs `mode=best` at the library's defaults (2048 candidates, 8-32 chain
# steps) on a few images, the library's `Interrogator.interrogate` against ours, in float16 (the
# default on CUDA) and float32 (the library computes CLIP under float16 autocast either way).
# Prints per-image seconds of each (caption, image-feature, label-ranking and chain parts), the
# near-tie fallback rate and how many strings equal the library's.
#
# Needs the project's ml extra installed (`make setup-full`, or the Docker image); no network.
#   bash benchmarks/gpu_check.sh            # IMAGES=4 PYTHON=.venv/bin/python by default
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
IMAGES=${IMAGES:-4}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'"
for dtype in float16 float32; do
    echo "== $dtype =="
    timeout 140 "$PYTHON" -W ignore benchmarks/bench_best_real.py --device cuda --dtype "$dtype" \
        --images "$IMAGES" --candidates 2048 --min-steps 8 --steps 32 --caption-tokens 20 \
        --threads "$(nproc)"
done
