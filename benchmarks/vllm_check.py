"""vLLM round trip on a GPU: the `vllm` and `hf` backends generate from the same checkpoint, greedily.

For each dtype, both backends answer the same real HH-RLHF queries (bundled test split) behind one shared
instruction prefix, as self-generation prompts share their constitution text. Reported per dtype:

- agreement: the share of prompts whose completions are identical, and the mean length of the common token
  prefix relative to the shorter completion (greedy decoding diverges at the first near-tie that the two
  kernels break differently; float32 should agree almost everywhere, bfloat16 less);
- tokens/s of each backend over the whole prompt set (after a warm-up), and vLLM's with prefix caching off.

    python benchmarks/vllm_check.py                          # the default model, float32 and bfloat16
    python benchmarks/vllm_check.py --model PATH --dtypes bfloat16 --prompts 512 --out vllm.json
    python benchmarks/vllm_check.py --hf-only --device cpu   # no GPU / no vLLM: checks the script's hf half

`pip install 'sami[vllm]'` first (Linux, CUDA). Without vLLM the script says so and exits 3; with `--hf-only` it
runs the hf half alone (a smoke test: it measures nothing worth recording).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

PREFIX = (
    "You are a helpful, honest and harmless assistant. Answer the user's question directly and politely, admit "
    "what you do not know, and refuse clearly and briefly to help with anything dangerous or illegal.\n\n"
)


def build_prompts(n: int) -> list[str]:
    from sami.data import load_queries

    queries = load_queries({"bundled": "hh_helpful_test", "subset": "helpful"})
    queries = (queries * (n // max(len(queries), 1) + 1))[:n]
    return [f"{PREFIX}Human: {q.query}\n\nAssistant:" for q in queries]


def timed(gen, prompts: list[str], max_new_tokens: int) -> tuple[list, float]:
    gen.generate(prompts[: min(4, len(prompts))], max_new_tokens=4)  # warm-up (kernels, graphs, caches)
    start = time.perf_counter()
    outs = gen.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0)
    seconds = time.perf_counter() - start
    return outs, sum(o.num_tokens for o in outs) / seconds


def agreement(tokenizer, a: list, b: list) -> dict:
    """Exact-match share and mean common-prefix share (in tokens) of two lists of completions."""
    same, prefix_shares = 0, []
    for x, y in zip(a, b, strict=True):
        same += x.text == y.text
        ta, tb = tokenizer.encode(x.text, add_special_tokens=False), tokenizer.encode(y.text, add_special_tokens=False)
        common = next((i for i, (p, q) in enumerate(zip(ta, tb, strict=False)) if p != q), min(len(ta), len(tb)))
        prefix_shares.append(common / max(min(len(ta), len(tb)), 1))
    return {"exact_match": same / len(a), "mean_common_prefix": sum(prefix_shares) / len(prefix_shares)}


def free_gpu(vllm_gen=None) -> None:
    """Release a vLLM engine (its engine-core process too, best effort) and cached GPU memory."""
    import torch

    engine_core = getattr(getattr(getattr(vllm_gen, "llm", None), "llm_engine", None), "engine_core", None)
    if engine_core is not None and hasattr(engine_core, "shutdown"):
        engine_core.shutdown()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run(
    model: str = "default",
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    n_prompts: int = 256,
    max_new_tokens: int = 64,
    device: str = "cuda",
    hf_only: bool = False,
    batch_size: int = 64,
    prefix_caching_off: bool = True,
) -> dict:
    """The round trip for each dtype; returns the results (also printed as a table by `main`)."""
    from sami.generation import parse_generation
    from sami.generation.factory import make_generator
    from sami.models import load_tokenizer, resolve_model_path

    path, _ = resolve_model_path(model)
    tokenizer = load_tokenizer(path)
    prompts = build_prompts(n_prompts)
    results: dict = {"model": path, "prompts": len(prompts), "max_new_tokens": max_new_tokens, "rows": []}
    for dtype in dtypes:
        row: dict = {"dtype": dtype}
        hf = make_generator(
            parse_generation(backend="hf", model=path, dtype=dtype, device=device, batch_size=batch_size)
        )
        hf_out, row["hf_tok_s"] = timed(hf, prompts, max_new_tokens)
        del hf
        free_gpu()
        if not hf_only:
            for caching in (True, False) if prefix_caching_off else (True,):
                settings = parse_generation(
                    backend="vllm",
                    model=path,
                    dtype=dtype,
                    gpu_memory_utilization=0.3,  # room for the next engine if one is slow to let go
                    engine_kwargs={"enable_prefix_caching": caching},
                )
                vllm_gen = make_generator(settings)
                out, rate = timed(vllm_gen, prompts, max_new_tokens)
                row["vllm_tok_s" if caching else "vllm_no_prefix_cache_tok_s"] = rate
                if caching:
                    row |= agreement(tokenizer, hf_out, out)
                    row["examples"] = [
                        {"hf": h.text, "vllm": v.text} for h, v in zip(hf_out[:3], out[:3], strict=True)
                    ]
                free_gpu(vllm_gen)
                del vllm_gen
        results["rows"].append(row)
    return results


COLUMNS = [
    ("hf_tok_s", "{:.1f}"),
    ("vllm_tok_s", "{:.1f}"),
    ("vllm_no_prefix_cache_tok_s", "{:.1f}"),
    ("exact_match", "{:.1%}"),
    ("mean_common_prefix", "{:.1%}"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="checkpoint folder both backends load (default model)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="hf backend batch")
    parser.add_argument("--device", default="cuda", help="hf backend device")
    parser.add_argument("--hf-only", action="store_true", help="skip vLLM (a smoke test of the script)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not args.hf_only:
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            print(f"vLLM is not installed here ({e}): pip install 'sami[vllm]' on a CUDA machine", file=sys.stderr)
            return 3
    results = run(
        args.model,
        tuple(args.dtypes),
        args.prompts,
        args.max_new_tokens,
        args.device,
        args.hf_only,
        args.batch_size,
    )
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}))
    print("| dtype | hf (tokens/s) | vllm (tokens/s) | vllm, no prefix cache | exact match | common prefix |")
    print("|---|---|---|---|---|---|")
    for r in results["rows"]:
        cells = [fmt.format(r[key]) if key in r else "-" for key, fmt in COLUMNS]
        print(f"| {r['dtype']} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
