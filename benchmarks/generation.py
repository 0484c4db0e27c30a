"""Aggregate generation speed (new tokens per second) of the hf backend and of a llama.cpp server.

Prompts are real TL;DR posts (the bundled `tldr_validation` queries) cut to about `--prompt-tokens` tokens;
every sequence is forced to produce exactly `--new-tokens` tokens (EOS is suppressed), so all settings do the
same work. Time includes the prompt prefill. Run from the project root:

    .venv/bin/python benchmarks/generation.py                 # hf fp32/bf16 at batch 1, 8, 32 + llama.cpp
    .venv/bin/python benchmarks/generation.py --no-server --batches 8 --dtypes bfloat16 --reference
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def build_prompts(tokenizer, n: int, prompt_tokens: int) -> list[str]:
    """`n` prompts of about `prompt_tokens` tokens from real posts (short posts are joined with the next)."""
    from sami.data import load_queries

    posts = [q.query for q in load_queries("tldr_validation")]
    suffix = "\n\nTL;DR:"
    budget = prompt_tokens - len(tokenizer(suffix).input_ids)
    prompts, i = [], 0
    while len(prompts) < n:
        ids: list[int] = []
        while len(ids) < budget:
            ids += tokenizer(posts[i % len(posts)] + "\n\n").input_ids
            i += 1
        prompts.append(tokenizer.decode(ids[:budget]) + suffix)
    return prompts


def time_hf(model, tokenizer, prompts: list[str], batch: int, new_tokens: int, repeats: int) -> tuple[float, float]:
    """Best and mean tokens/s of HFGenerator over `repeats` runs of `prompts` at `batch`."""
    from sami.generation.hf import HFGenerator

    gen = HFGenerator(model, tokenizer, batch_size=batch)
    gen.generate(prompts[:1], max_new_tokens=2)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        outs = gen.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        elapsed = time.perf_counter() - start
        assert all(o.num_tokens == new_tokens for o in outs), [o.num_tokens for o in outs]
        rates.append(sum(o.num_tokens for o in outs) / elapsed)
    return max(rates), sum(rates) / len(rates)


def time_reference(model, tokenizer, prompts: list[str], batch: int, new_tokens: int, repeats: int):
    """The same measurement with transformers' own `model.generate` (left padding, greedy)."""
    import torch

    tokenizer.padding_side = "left"
    rates = []
    with torch.inference_mode():
        model.generate(**tokenizer(prompts[:1], return_tensors="pt"), max_new_tokens=2)
        for _ in range(repeats):
            start = time.perf_counter()
            for s in range(0, len(prompts), batch):
                enc = tokenizer(prompts[s : s + batch], return_tensors="pt", padding=True)
                model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            rates.append(len(prompts) * new_tokens / (time.perf_counter() - start))
    return max(rates), sum(rates) / len(rates)


def start_server(threads: int) -> tuple[subprocess.Popen, str]:
    """A llama.cpp OpenAI-compatible server on loopback serving the bundled GGUF (as the tests start it)."""
    import socket

    from sami.models import default_gguf_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf_path()), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", "4096", "--n_threads", str(threads), "--model_alias", "smollm2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError("llama.cpp server exited early (is llama-cpp-python[server] installed and working?)")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return proc, url
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError("llama.cpp server did not start in 120 s") from None
            time.sleep(0.5)


def time_server(url: str, prompts: list[str], concurrency: int, new_tokens: int, repeats: int):
    from sami.generation.openai_backend import OpenAIGenerator

    gen = OpenAIGenerator(url, max_concurrency=concurrency, extra_body={"min_tokens": new_tokens})
    gen.generate(prompts[:1], max_new_tokens=2)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        outs = gen.generate(prompts, max_new_tokens=new_tokens)
        elapsed = time.perf_counter() - start
        rates.append(sum(o.num_tokens for o in outs) / elapsed)
    return max(rates), sum(rates) / len(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--prompt-tokens", type=int, default=300)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompts-at-batch-1", type=int, default=2, help="prompts timed one by one at batch 1")
    p.add_argument("--repeats", type=int, default=1, help="runs per setting (best and mean are reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--reference", action="store_true", help="also time transformers' model.generate")
    p.add_argument(
        "--int8", action="store_true", help="also time float32 with int8 dynamic quantization of the Linear layers"
    )
    p.add_argument("--no-server", action="store_true", help="skip the llama.cpp server")
    p.add_argument("--base-url", help="use this running server instead of starting llama.cpp")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--server-prompts", type=int, default=8)
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args()

    import torch

    from sami.models import load_model, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer("default")
    prompts = build_prompts(tokenizer, max(max(args.batches), args.server_prompts), args.prompt_tokens)
    mean_len = sum(len(tokenizer(x).input_ids) for x in prompts) / len(prompts)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"prompts: {len(prompts)} x ~{mean_len:.0f} tokens, {args.new_tokens} new tokens each")
    rows = []

    def report(engine: str, setting: str, n: int, best: float, mean: float) -> None:
        rows.append({"engine": engine, "setting": setting, "prompts": n, "best_tok_s": best, "mean_tok_s": mean})
        print(f"| {engine} | {setting} | {n} | {best:.1f} | {mean:.1f} |", flush=True)

    print("| engine | setting | prompts | tokens/s (best) | tokens/s (mean) |\n|---|---|---|---|---|")
    settings = list(args.dtypes) + (["int8-dynamic"] if args.int8 else [])
    for dtype in settings:
        if dtype == "int8-dynamic":  # an experiment only: torch.ao dynamic quantization is deprecated
            import warnings

            warnings.filterwarnings("ignore")
            model = torch.ao.quantization.quantize_dynamic(
                load_model("default").eval(), {torch.nn.Linear}, dtype=torch.qint8
            )
        else:
            model = load_model("default", dtype=dtype).eval()
        for batch in args.batches:
            some = prompts[: args.prompts_at_batch_1 if batch == 1 else batch]
            best, mean = time_hf(model, tokenizer, some, batch, args.new_tokens, args.repeats)
            report("sami hf", f"{dtype}, batch {batch}", len(some), best, mean)
            if args.reference:
                best, mean = time_reference(model, tokenizer, some, batch, args.new_tokens, args.repeats)
                report("transformers generate()", f"{dtype}, batch {batch}", len(some), best, mean)
        del model

    if not args.no_server:
        proc, url = (None, args.base_url) if args.base_url else start_server(torch.get_num_threads())
        try:
            some = prompts[: args.server_prompts]
            for c in args.concurrency:
                best, mean = time_server(url, some, c, args.new_tokens, args.repeats)
                report("llama.cpp server (completions)", f"GGUF, concurrency {c}", len(some), best, mean)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=20)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
