#!/usr/bin/env bash
# Resolve each optional extra's dependency set with pip's resolver, installing nothing (`pip install --dry-run
# --ignore-installed --report`): a conflict between an extra and the project's own requirements fails CI.
# The CPU extras are resolved beside the CPU venv's pin (torch==2.13.0, see the Makefile); vllm brings its own
# torch (vllm 0.33.0: torch==2.14.0, transformers>=5.16.1,<5.21), so it is resolved beside the project alone.
# Usage: .ci/resolve_extras.sh [PIP]   (PIP: the pip to use, default .venv/bin/pip)   Needs the package index.
set -uo pipefail
cd "$(dirname "$0")/.."
PIP="${1:-.venv/bin/pip}"
TORCH_PIN="torch==2.13.0"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
fail=0
resolve() {  # name, requirements...
  local name="$1"; shift
  if "$PIP" install --dry-run --ignore-installed --quiet --report "$out/$name.json" "$@" >"$out/$name.log" 2>&1; then
    python3 - "$out/$name.json" "$name" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
got = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in report["install"]}
keys = ("torch", "transformers", "accelerate", "vllm", "deepspeed", "trl", "llama-cpp-python")
print(f"ok   {sys.argv[2]:<22} " + " ".join(f"{k}=={got[k]}" for k in keys if k in got))
PY
  else
    echo "FAIL $name: $(grep -m1 -E '^ERROR' "$out/$name.log" || tail -n 1 "$out/$name.log")"
    fail=1
  fi
}
resolve core "." "$TORCH_PIN"
resolve test ".[test]" "$TORCH_PIN"
resolve compare ".[compare]" "$TORCH_PIN"
resolve deepspeed ".[deepspeed]" "$TORCH_PIN"
resolve server ".[server]" "$TORCH_PIN"
resolve vllm ".[vllm]"
resolve vllm+deepspeed ".[vllm,deepspeed]"
exit "$fail"
