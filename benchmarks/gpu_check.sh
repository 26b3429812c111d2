#!/usr/bin/env bash
# GPU check v2 of `mode=best` (issues 11 and 17): one command, under 5 minutes on one H100.
#
# benchmarks/gpu_check.py: random-weight BLIP-large and ViT-L-14 on CUDA in float16 (the
# library's CUDA setup), label tables reduced to ~2,900 phrases, the library's defaults (2048
# candidates, 8-32 chain steps). Prints the batch tie tolerance on the card (float16 autocast
# and true float32: what fastchain.TIE_TOLERANCES must be 4x of); per image seconds by part,
# the library's `Interrogator.interrogate` vs ours at batch 1 and batch 8, in the `random` and
# `planted` image regimes, strings compared, fallback levels (fallbacks, rescored, full_batch);
# the float16 noise floor (the library's float16 strings vs its true float32 ones, ours vs both).
# Then, in what time is left, one line each for a Textual Inversion step and the Imagic phases on
# SD 1.5's architecture at 512 px, fp16 autocast, random weights (benchmarks/bench_training.py).
#
# Needs the project's ml extra installed (`make setup-full`, or the Docker image); no network.
#   bash benchmarks/gpu_check.sh             # IMAGES=4 BATCH=8 BUDGET=300 PYTHON=.venv/bin/python
#   bash benchmarks/gpu_check.sh --device cpu --tiny --images 2 --batch 2 --candidates 48 \
#       --min-steps 2 --steps 3              # smoke test on CPU (no SD part)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
IMAGES=${IMAGES:-4}
BATCH=${BATCH:-8}
BUDGET=${BUDGET:-300}  # seconds for everything; the captioning part gets all but SD_SECONDS
SD_SECONDS=${SD_SECONDS:-60}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
CUDA=1
for arg in "$@"; do case "$arg" in cpu | --device=cpu) CUDA=0 ;; esac; done
if [ "$CUDA" = 1 ]; then
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'"
fi
check=$((BUDGET - SD_SECONDS))
# The python part stops starting optional phases 10 s before its share runs out; timeout is
# the backstop.
timeout $((check + 30)) "$PYTHON" -W ignore -m benchmarks.gpu_check --images "$IMAGES" \
    --batch "$BATCH" --budget $((check - 10)) --threads "$(nproc)" "$@" \
    || echo "gpu_check.py: exit $? (timeout or error; the figures above stand)"
left=$((BUDGET - SECONDS))
if [ "$CUDA" = 1 ] && [ "$left" -gt 30 ]; then
    echo "== SD 1.5 training steps, 512 px, fp16 autocast, random weights ($left s left) =="
    timeout "$left" "$PYTHON" -W ignore -m benchmarks.bench_training --device cuda \
        --resolution 512 --ti-steps 2 --budget $((left - 25)) \
        || echo "bench_training: exit $? (timeout or error; lines above stand)"
elif [ "$CUDA" = 1 ]; then
    echo "SD 1.5 training steps: skipped (time budget)"
fi
