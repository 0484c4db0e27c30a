"""GPU check on a random-weight ~1B llama (built from a config; no weights travel), bf16.

1. One SAMI training step (forward + backward of the loss over B queries) at the paper's shapes (P prompt, R
   response tokens, C constitutions; default the four of `train_step.SHAPES`), same inputs, same process:
   `chunked` (the default path: chunked LM head + log-softmax, boolean sdpa mask), `flex` (the same with
   FlexAttention block masks: blocks no token may attend are skipped), `unchunked` (full-vocabulary logits and the
   dense additive mask: the former path) and `reference` (B·C² right-padded rows, logits over the full
   vocabulary): median time, peak GPU memory (`max_memory_allocated`) and max abs difference to `unchunked`.
   A variant that runs out of memory is reported as such and the next one runs.
2. `hf` backend generation throughput at large batch (prompt ≈ 300 tokens, 64 new tokens) beside transformers'
   own `model.generate` on the same prompts.

    python benchmarks/gpu_check.py                     # on a CUDA machine
    python benchmarks/gpu_check.py --vocab 128256      # the same with a Llama-3-sized vocabulary
    python benchmarks/gpu_check.py --tiny --device cpu # a short smoke run of the same code (flex is GPU-only)
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
from train_step import SHAPES, ModuloTokenizer, build_inputs, prefix_matrices, reference_matrices  # noqa: E402

from sami.lm_head import auto_chunk_size  # noqa: E402
from sami.loss import sami_loss  # noqa: E402

TRAIN_VARIANTS = ("chunked", "flex", "unchunked", "reference")


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


def set_attention(model, impl: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl


def run_train_variant(name: str, model, tokenizer, prompts, responses) -> torch.Tensor:
    if name == "reference":
        return reference_matrices(model, tokenizer, prompts, responses)
    if name == "unchunked":
        return prefix_matrices(model, tokenizer, prompts, responses, chunk_size=0, dense_mask=True)
    set_attention(model, "flex_attention" if name == "flex" else "sdpa")
    try:  # the chunked head forced on, whatever the size of the logits
        return prefix_matrices(
            model, tokenizer, prompts, responses, chunk_size=auto_chunk_size(model.config.vocab_size)
        )
    finally:
        set_attention(model, "sdpa")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step_table(
    model, tokenizer, device: str, batch: int, shapes: list[tuple[int, int, int]], reps: int, variants, step_tokens
) -> list[dict]:
    rows, fixed_batch = [], batch
    for p, r, c in shapes:
        batch = fixed_batch if fixed_batch > 0 else max(1, step_tokens // (c * (p + c * r)))
        p1, r1 = build_inputs(getattr(tokenizer, "tok", tokenizer), c, p, r)
        prompts, responses = [p1] * batch, [r1] * batch
        results, mats = {}, {}
        for name in variants:
            times, peak, error = [], None, None
            try:
                for rep in range(reps + 1):
                    model.zero_grad(set_to_none=True)
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                    sync(device)
                    start = time.perf_counter()
                    m = run_train_variant(name, model, tokenizer, prompts, responses)
                    sami_loss(m).loss.backward()
                    sync(device)
                    if rep:
                        times.append(time.perf_counter() - start)
                    mats[name] = m.detach().float()
                    del m
                    if device.startswith("cuda"):
                        peak = torch.cuda.max_memory_allocated() / 2**30
            except torch.OutOfMemoryError as e:
                error = f"out of memory: {str(e).splitlines()[0][:80]}"
            except Exception as e:  # e.g. FlexAttention where it cannot run: reported, the others still run
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            model.zero_grad(set_to_none=True)
            results[name] = {"time_s": statistics.median(times) if times else None, "peak_gib": peak, "error": error}
        for name, res in results.items():
            base = results.get("reference", {}).get("time_s")
            speedup = base / res["time_s"] if base and res["time_s"] else None
            diff = None
            if name in mats and "unchunked" in mats and name != "unchunked":
                diff = (mats[name] - mats["unchunked"]).abs().max().item()
            rows.append(
                {"P": p, "R": r, "C": c, "B": batch, "variant": name, **res, "speedup": speedup, "max_abs_diff": diff}
            )
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
    parser.add_argument("--batch", type=int, default=0, help="queries per training step (0: from --step-tokens)")
    parser.add_argument(
        "--step-tokens", type=int, default=8192, help="with --batch 0: B = max(1, this // (C·(P + C·R)))"
    )
    parser.add_argument(
        "--shapes", nargs="+", default=[",".join(map(str, s)) for s in SHAPES], help="P,R,C of the training step"
    )
    parser.add_argument("--variants", nargs="+", default=list(TRAIN_VARIANTS), choices=TRAIN_VARIANTS)
    parser.add_argument("--vocab", type=int, help="vocabulary of the random model (default: the tokenizer's)")
    parser.add_argument("--no-generation", action="store_true", help="the training-step table only")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--gen-batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--gen-prompts", type=int, default=256)
    parser.add_argument("--out", help="write the raw results as JSON here")
    parser.add_argument("--vllm", action="store_true", help="also run benchmarks/vllm_check.py (vllm vs hf backend)")
    args = parser.parse_args()

    tokenizer = load_tok()
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    vocab = args.vocab or len(tokenizer)
    model = build_model(vocab, args.tiny, args.device, dtype)
    step_tokenizer = tokenizer if vocab == len(tokenizer) else ModuloTokenizer(tokenizer, vocab)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    n_params = sum(p.numel() for p in model.parameters())
    info = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    info |= {"torch": torch.__version__, "params": n_params, "dtype": str(dtype)}
    print(json.dumps(info))
    model.train()
    train = train_step_table(
        model, step_tokenizer, args.device, args.batch, shapes, args.reps, args.variants, args.step_tokens
    )
    print("| P, R, C | B | variant | time (s, median) | vs reference | peak GPU memory (GiB) | max abs diff | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in train:
        t = f"{r['time_s']:.3f}" if r["time_s"] else "-"
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        pk = f"{r['peak_gib']:.1f}" if r["peak_gib"] else "-"
        d = f"{r['max_abs_diff']:.1e}" if r["max_abs_diff"] is not None else "-"
        shape = f"{r['P']}, {r['R']}, {r['C']}"
        print(f"| {shape} | {r['B']} | {r['variant']} | {t} | {sp} | {pk} | {d} | {r['error'] or ''} |", flush=True)
    gen = []
    if not args.no_generation and vocab == len(tokenizer):
        model.eval()
        gen = generation_table(model, tokenizer, args.gen_batches, args.gen_prompts, 64)
    if gen:
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
