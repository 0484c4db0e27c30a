"""The planner's training-memory estimate (`sami.plan.training_memory`) against measured CPU training steps.

Each cell runs in a fresh subprocess: import torch/transformers/sami, build the input texts, read the resident
set (the baseline: the Python runtime and the texts, which a GPU's memory does not hold), build the model (the bundled
SmolLM2-135M or a random llama at `benchmarks/train_step.py`'s shapes: hidden 256, 4 layers, untied head) and the
inputs (`train_step.build_inputs`: real TL;DR prompts of ≈ P tokens, C responses of R tokens, repeated for B
queries), then run `--steps` full optimizer steps in float32 (SAMI loss over `packed_logprobs` with the default
automatic LM-head chunking, backward, AdamW step, `zero_grad(set_to_none=True)`). Measured = the process's
resident-set high-water mark (`VmHWM`) minus the baseline. The estimate is computed from the model's config and
the same B, C, P, R (the longest prompt and response in tokens, as `pack_encoded` pads to them).

    .venv/bin/python benchmarks/plan_memory.py --cells default:400,60,2,1 random:131072:200,350,2,1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import build_inputs, load, status_mb  # noqa: E402

from sami.logprobs import encode_examples, pack_encoded, packed_logprobs  # noqa: E402
from sami.loss import sami_loss  # noqa: E402
from sami.model_shapes import shape_from_config  # noqa: E402
from sami.plan import GB, TrainSetup, training_memory  # noqa: E402

CELLS = ["default:400,60,2,1", "default:200,350,2,1", "random:8192:200,350,2,1", "random:131072:200,350,2,1"]


def parse(cell: str) -> tuple[str, tuple[int, int, int, int]]:
    model, shape = cell.rsplit(":", 1)
    p, r, c, b = (int(x) for x in shape.split(","))
    return model, (p, r, c, b)


def child(cell: str, steps: int, checkpointing: bool) -> None:
    model_ref, (p, r, c, b) = parse(cell)
    from sami.models import default_model_path, load_tokenizer

    prompts, responses = build_inputs(load_tokenizer(default_model_path()), c, p, r)  # texts first: not counted
    baseline = status_mb("VmRSS")
    model, tokenizer, _ = load(model_ref)
    if checkpointing:
        model.gradient_checkpointing_enable()
    enc = encode_examples(tokenizer, [prompts] * b, [responses] * b, eos="always")
    packed = pack_encoded(enc, pad_token_id=tokenizer.pad_token_id)
    p_max = max(len(x) for x in enc.prompt_ids[0])
    r_max = max(len(x) for x in enc.response_ids[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for _ in range(steps):
        matrix = packed_logprobs(model, packed, normalize="mean").view(b, c, c)
        sami_loss(matrix).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    measured = (status_mb("VmHWM") - baseline) * 2**20
    shape = shape_from_config(model.config.to_dict(), model_ref, "model.config")
    setup = TrainSetup(micro_batch=b, c=c, prompt_tokens=p_max, response_tokens=r_max, checkpointing=checkpointing)
    estimate = training_memory(shape, setup)
    print(
        json.dumps(
            {
                "cell": cell,
                "P": p_max,
                "R": r_max,
                "checkpointing": checkpointing,
                "measured_gb": measured / GB,
                "estimate_gb": estimate.total / GB,
                "parts_gb": {k: round(v / GB, 3) for k, v in estimate.parts.items()},
                "baseline_gb": baseline * 2**20 / GB,
                "threads": torch.get_num_threads(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", nargs="+", default=CELLS, help="MODEL:P,R,C,B (MODEL: default or random:VOCAB)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per cell")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.gradient_checkpointing)
        return
    print("| model | P, R, C, B | checkpointing | estimate (GB) | measured (GB) | estimate / measured |")
    print("|---|---|---|---|---|---|")
    for cell in args.cells:
        cmd = [sys.executable, __file__, "--child", cell, "--steps", str(args.steps)]
        cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"| {cell} | failed: {(out.stderr.strip().splitlines() or ['?'])[-1][-200:]} |||||")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), file=sys.stderr)
        model, shape = cell.rsplit(":", 1)
        ckpt = "yes" if row["checkpointing"] else "no"
        est, got = row["estimate_gb"], row["measured_gb"]
        print(
            f"| {model} | {row['P']}, {row['R']}, {shape.split(',', 2)[2]} | {ckpt} | {est:.2f} | {got:.2f} "
            f"| {est / got:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
