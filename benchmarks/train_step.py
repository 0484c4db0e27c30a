"""One forward + backward of the SAMI loss on the default model: prefix-shared vs the reference formulation.

* prefix-shared: `sami.logprobs.batched_logprob_matrices` (C rows, each prompt once followed by all C responses,
  4D attention mask, LM head only where a response token is predicted);
* reference: C² right-padded rows (prompt_i + response_j), full-vocabulary logits at every position, float32
  log-softmax, gather of the response tokens (what a direct implementation of the paper does).

Both get the same real inputs (TL;DR posts from the shared data with the paper's strong-writer constitution;
prompts ≈ 400 tokens, responses ≈ 60 tokens) and the same normalisation (mean log-prob per response token).

Time: median of `--reps` steps after one warm-up step, both variants interleaved in the same process.
Peak memory: every (variant, C) runs again in a fresh subprocess that loads the model, builds the inputs, does
one step and reads its own resident-set high-water mark (`VmHWM` in /proc/self/status: it counts every page
torch's CPU allocator touched, which Python-level tracers such as tracemalloc do not see). The table shows that
peak and its growth over the resident set just before the step (model and inputs loaded).

    .venv/bin/python benchmarks/train_step.py            # C = 2 and 4
    .venv/bin/python benchmarks/train_step.py --c 2 --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from sami.logprobs import batched_logprob_matrices
from sami.loss import sami_loss
from sami.models import default_model_path, load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SAMI_SHARED_DATA", ROOT.parent / "shared" / "data"))
PROMPT_TOKENS = 400
RESPONSE_TOKENS = 60


def build_inputs(tokenizer, c: int) -> tuple[list[str], list[str]]:
    """C prompts (constitution + post, ≈ 400 tokens) and C responses (≈ 60 tokens) from real shared data."""
    cset = json.loads((DATA / "constitutions" / "tldr_opus.json").read_text())
    posts = [json.loads(line)["query"] for line in (DATA / "tldr" / "validation.jsonl").open()]
    principles = cset["principles"]
    header = "Write a summary of the Reddit post that follows these principles:\n"
    post_ids = next(ids for ids in (tokenizer(p, add_special_tokens=False).input_ids for p in posts) if len(ids) > 400)
    prompts = []
    for i in range(c):
        # constitution i: principle k in its positive form unless bit k of i is set
        texts = [p["antithesis"] if (i >> k) & 1 else p["principle"] for k, p in enumerate(principles)]
        lines = [f"{k + 1}. {text}" for k, text in enumerate(texts)]
        prefix = header + "\n".join(lines) + "\n\nPOST: "
        suffix = "\n\nTL;DR:"
        budget = PROMPT_TOKENS - len(tokenizer(prefix + suffix).input_ids)
        prompts.append(prefix + tokenizer.decode(post_ids[:budget]) + suffix)
    responses = []
    for j in range(c):
        ids = tokenizer(posts[1 + j], add_special_tokens=False).input_ids[: RESPONSE_TOKENS - 1]
        responses.append(" " + tokenizer.decode(ids).strip())
    return prompts, responses


def reference_matrices(model, tokenizer, prompts: list[list[str]], responses: list[list[str]]) -> torch.Tensor:
    """The C² formulation for B queries: one right-padded row per (query, prompt, response), logits over the full
    vocabulary, float32 log-softmax, mean log-prob of the response tokens (EOS included). Returns [B, C, C]."""
    pairs = []
    for ps, rs in zip(prompts, responses, strict=True):
        r_ids = [tokenizer(r, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for r in rs]
        for p in ps:
            p_ids = tokenizer(p).input_ids
            pairs += [(p_ids, r) for r in r_ids]
    width = max(len(a) + len(b) for a, b in pairs)
    input_ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels_mask = torch.zeros((len(pairs), width), dtype=torch.bool)
    for k, (a, b) in enumerate(pairs):
        input_ids[k, : len(a) + len(b)] = torch.tensor(a + b)
        attention_mask[k, : len(a) + len(b)] = 1
        labels_mask[k, len(a) : len(a) + len(b)] = True
    device = next(model.parameters()).device
    input_ids, attention_mask, labels_mask = input_ids.to(device), attention_mask.to(device), labels_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logps = logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1) * labels_mask[:, 1:]
    matrix = token_logps.sum(-1) / labels_mask[:, 1:].sum(-1)
    c = len(prompts[0])
    return matrix.view(len(prompts), c, c)


def reference_matrix(model, tokenizer, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """One query's [1, C, C] reference matrix."""
    return reference_matrices(model, tokenizer, [prompts], [responses])


def prefix_matrix(model, tokenizer, prompts: list[str], responses: list[str]) -> torch.Tensor:
    return batched_logprob_matrices(model, tokenizer, [prompts], [responses], normalize="mean")


VARIANTS = {"prefix": prefix_matrix, "reference": reference_matrix}


def step(model, tokenizer, variant: str, prompts, responses) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    matrix = VARIANTS[variant](model, tokenizer, prompts, responses)
    sami_loss(matrix).loss.backward()
    return time.perf_counter() - start, matrix.detach()


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def load(model_ref: str, random_init: bool):
    """The model (trained weights, or a random initialisation of the same architecture) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = default_model_path() if model_ref == "default" else model_ref
    tokenizer = load_tokenizer(path)
    if random_init:
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(path)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    else:
        model = load_model(path)
    return model.train(), tokenizer


def guard_memory(min_available_gb: float = 1.5) -> None:
    """Stop this process before the machine runs out of memory (it may be shared)."""
    while True:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:") and int(line.split()[1]) < min_available_gb * 2**20:
                print(json.dumps({"error": f"stopped: less than {min_available_gb} GiB of memory left"}), flush=True)
                os._exit(3)
        time.sleep(0.02)


def child(variant: str, c: int, model_ref: str, random_init: bool) -> None:
    """Fresh process: one step of one variant; print peak RSS and its growth over the loaded state (MiB)."""
    threading.Thread(target=guard_memory, daemon=True).start()
    model, tokenizer = load(model_ref, random_init)
    prompts, responses = build_inputs(tokenizer, c)
    before = status_mb("VmRSS")
    step(model, tokenizer, variant, prompts, responses)
    # VmHWM is this process's own high-water mark. (ru_maxrss is not: Linux carries the parent's resident set
    # into it across fork + exec, so a child of a process that has just run the big variant reports that peak.)
    peak = status_mb("VmHWM")
    print(json.dumps({"peak_mb": peak, "growth_mb": peak - before}))


def measure_memory(variant: str, c: int, model_ref: str, random_init: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--c", str(c), "--model", model_ref]
    cmd += ["--random-init"] if random_init else []
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stdout.strip().splitlines() or out.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {out.returncode}: {last}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--c", type=int, nargs="+", default=[2, 4], help="numbers of constitutions")
    parser.add_argument("--reps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument(
        "--skip-reference-memory",
        type=int,
        nargs="*",
        default=[],
        help="C values for which the reference memory run is skipped (it would not fit)",
    )
    parser.add_argument("--no-memory", action="store_true", help="time only")
    parser.add_argument("--memory-only", action="store_true", help="peak memory only (no timing)")
    parser.add_argument("--model", default="default", help="model folder (default: the bundled SmolLM2-135M)")
    parser.add_argument("--random-init", action="store_true", help="random weights with the model's architecture")
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.c[0], args.model, args.random_init)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible")
    if args.memory_only:  # the children load their own model
        model, tokenizer = None, load_tokenizer(default_model_path() if args.model == "default" else args.model)
    else:
        model, tokenizer = load(args.model, args.random_init)
    rows = []
    for c in args.c:
        prompts, responses = build_inputs(tokenizer, c)
        p_len = statistics.mean(len(tokenizer(p).input_ids) for p in prompts)
        r_len = statistics.mean(len(tokenizer(r, add_special_tokens=False).input_ids) + 1 for r in responses)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        matrices = {v: torch.full((1, c, c), float("nan")) for v in VARIANTS}
        # rep 0 warms up; the variants alternate so that both see the same machine load
        for rep in range(0 if args.memory_only else args.reps + 1):
            for v in VARIANTS:
                t, matrices[v] = step(model, tokenizer, v, prompts, responses)
                print(f"C={c} {v} {'warm-up' if rep == 0 else f'rep {rep}'}: {t:.2f} s", flush=True)
                if rep:
                    times[v].append(t)
        diff = (matrices["prefix"] - matrices["reference"]).abs().max().item()
        median = {v: statistics.median(times[v]) if times[v] else float("nan") for v in VARIANTS}
        mem = {}
        if not args.no_memory:
            for v in VARIANTS:
                skip = v == "reference" and c in args.skip_reference_memory
                mem[v] = {"error": "skipped"} if skip else measure_memory(v, c, args.model, args.random_init)
        for v in VARIANTS:
            rows.append(
                {
                    "C": c,
                    "variant": v,
                    "prompt_tokens": p_len,
                    "response_tokens": r_len,
                    "time_s": median[v],
                    "times": times[v],
                    "speedup": median["reference"] / median[v],
                    "max_abs_diff": diff,
                    **mem.get(v, {}),
                }
            )
    print()
    print(
        "| C | variant | prompt tok | response tok | time (s, median) | speed-up | peak RSS (GiB) | growth (GiB) "
        "| max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_mb'] / 1024:.2f}" if "peak_mb" in r else r.get("error", "-")
        growth = f"{r['growth_mb'] / 1024:.2f}" if "growth_mb" in r else "-"
        print(
            f"| {r['C']} | {r['variant']} | {r['prompt_tokens']:.0f} | {r['response_tokens']:.0f} | "
            f"{r['time_s']:.2f} | {r['speedup']:.2f}x | {peak} | {growth} | {r['max_abs_diff']:.2e} |"
        )
    print("\nraw:", json.dumps(rows))


if __name__ == "__main__":
    main()
