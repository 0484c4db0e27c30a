"""GPU check on a random-weight ~1B llama (built from a config; no weights travel), bf16.

1. One SAMI training step (forward + backward of the loss over B queries): prefix-shared
   (`sami.logprobs.batched_logprob_matrices`) vs the reference formulation (B·C² right-padded rows, logits over
   the full vocabulary), same inputs, same process: median time and peak GPU memory (`max_memory_allocated`).
2. `hf` backend generation throughput at large batch (prompt ≈ 300 tokens, 64 new tokens) beside transformers'
   own `model.generate` on the same prompts.

    python benchmarks/gpu_check.py                     # on a CUDA machine
    python benchmarks/gpu_check.py --tiny --device cpu # a seconds-long smoke run of the same code
    python benchmarks/gpu_check.py --vllm              # then the vLLM round trip (benchmarks/vllm_check.py)

The tokenizer is the default model's (49,152 tokens); `SAMI_TOKENIZER` may point at a copied tokenizer folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generation import build_prompts  # noqa: E402
from train_step import build_inputs, reference_matrices  # noqa: E402

from sami.logprobs import batched_logprob_matrices  # noqa: E402
from sami.loss import sami_loss  # noqa: E402


def load_tok():
    from sami.models import default_model_path, load_tokenizer

    return load_tokenizer(os.environ.get("SAMI_TOKENIZER") or default_model_path())


def build_model(vocab: int, tiny: bool, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    else:  # ~0.9B parameters with the 49k vocabulary (tied embeddings)
        size = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=18, num_attention_heads=32)
    size["num_key_value_heads"] = size["num_attention_heads"] // 4
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=True, **size)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model


def prefix(model, tokenizer, prompts, responses) -> torch.Tensor:
    return batched_logprob_matrices(model, tokenizer, prompts, responses, normalize="mean")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step_table(model, tokenizer, device: str, batch: int, cs: list[int], reps: int) -> list[dict]:
    rows = []
    for c in cs:
        p1, r1 = build_inputs(tokenizer, c)
        prompts, responses = [p1] * batch, [r1] * batch
        results, mats = {}, {}
        for name, fn in (("prefix", prefix), ("reference", reference_matrices)):
            times, peak, error = [], None, None
            try:
                for rep in range(reps + 1):
                    model.zero_grad(set_to_none=True)
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                    sync(device)
                    start = time.perf_counter()
                    m = fn(model, tokenizer, prompts, responses)
                    sami_loss(m).loss.backward()
                    sync(device)
                    if rep:
                        times.append(time.perf_counter() - start)
                    mats[name] = m.detach().float()
                    if device.startswith("cuda"):
                        peak = torch.cuda.max_memory_allocated() / 2**30
            except torch.OutOfMemoryError as e:
                error = f"out of memory: {str(e).splitlines()[0][:80]}"
            model.zero_grad(set_to_none=True)
            results[name] = {"time_s": statistics.median(times) if times else None, "peak_gib": peak, "error": error}
        diff = (mats["prefix"] - mats["reference"]).abs().max().item() if len(mats) == 2 else None
        for name, r in results.items():
            ref_t = results["reference"]["time_s"]
            speedup = ref_t / r["time_s"] if ref_t and r["time_s"] else None
            rows.append({"C": c, "B": batch, "variant": name, **r, "speedup": speedup, "max_abs_diff": diff})
    return rows


def generation_table(model, tokenizer, batches: list[int], n_prompts: int, new_tokens: int) -> list[dict]:
    from sami.generation.hf import HFGenerator

    prompts = build_prompts(tokenizer, n_prompts, 300)
    rows = []
    for b in batches:
        gen = HFGenerator(model, tokenizer, batch_size=b)
        gen.generate(prompts[:b], max_new_tokens=4)  # warm-up
        sync(str(model.device))
        start = time.perf_counter()
        outs = gen.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        sync(str(model.device))
        hf_rate = sum(o.num_tokens for o in outs) / (time.perf_counter() - start)
        tokenizer.padding_side = "left"
        with torch.inference_mode():
            start = time.perf_counter()
            for s in range(0, len(prompts), b):
                enc = tokenizer(prompts[s : s + b], return_tensors="pt", padding=True).to(model.device)
                model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            sync(str(model.device))
            ref_rate = len(prompts) * new_tokens / (time.perf_counter() - start)
        rows.append({"batch": b, "hf_backend_tok_s": hf_rate, "model_generate_tok_s": ref_rate})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: checks the script, measures nothing")
    parser.add_argument("--batch", type=int, default=8, help="queries per training step")
    parser.add_argument("--c", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--gen-batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--gen-prompts", type=int, default=256)
    parser.add_argument("--out", help="write the raw results as JSON here")
    parser.add_argument("--vllm", action="store_true", help="also run benchmarks/vllm_check.py (vllm vs hf backend)")
    args = parser.parse_args()

    tokenizer = load_tok()
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    model = build_model(len(tokenizer), args.tiny, args.device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    info = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    info |= {"torch": torch.__version__, "params": n_params, "dtype": str(dtype)}
    print(json.dumps(info))
    model.train()
    train = train_step_table(model, tokenizer, args.device, args.batch, args.c, args.reps)
    print("| C | B | variant | time (s, median) | speed-up | peak GPU memory (GiB) | max abs diff | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in train:
        t = f"{r['time_s']:.3f}" if r["time_s"] else "-"
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        pk = f"{r['peak_gib']:.1f}" if r["peak_gib"] else "-"
        d = f"{r['max_abs_diff']:.1e}" if r["max_abs_diff"] is not None else "-"
        print(f"| {r['C']} | {r['B']} | {r['variant']} | {t} | {sp} | {pk} | {d} | {r['error'] or ''} |")
    model.eval()
    gen = generation_table(model, tokenizer, args.gen_batches, args.gen_prompts, 64)
    print("| batch | hf backend (tokens/s) | model.generate (tokens/s) |")
    print("|---|---|---|")
    for r in gen:
        print(f"| {r['batch']} | {r['hf_backend_tok_s']:.0f} | {r['model_generate_tok_s']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "train": train, "generation": gen}, indent=2))
    if args.vllm:
        import vllm_check

        del model
        out = ["--out", str(Path(args.out).with_suffix(".vllm.json"))] if args.out else []
        sys.exit(vllm_check.main(["--device", args.device, *out]))


if __name__ == "__main__":
    main()
