#!/usr/bin/env bash
# The paper's HH recipe in miniature on every visible GPU: a 1B-class random llama saved locally, vLLM
# self-generation, FSDP training for 2 steps, export, evaluation, reload; each stage's time and peak memory go to
# OUT/smoke.json and OUT/smoke.md. Needs `pip install -e '.[vllm]'` on a GPU node. `--cpu`: dry mode (no GPU).
# Usage: benchmarks/gpu_smoke.sh [--cpu] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" benchmarks/gpu_smoke.py "$@"
