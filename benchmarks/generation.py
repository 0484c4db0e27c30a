"""Aggregate generation speed (new tokens per second) of the hf backend and of a llama.cpp server.

Prompts are real TL;DR posts (the bundled `tldr_validation` queries) cut to about `--prompt-tokens` tokens;
every sequence is forced to produce exactly `--new-tokens` tokens (EOS is suppressed), so all settings do the
same work. Time includes the prompt prefill. Run from the project root:

    .venv/bin/python benchmarks/generation.py                 # hf fp32/bf16 at batch 1, 8, 32 + llama.cpp
    .venv/bin/python benchmarks/generation.py --no-server --batches 8 --dtypes bfloat16 --reference
    .venv/bin/python benchmarks/generation.py --no-server --sami-prompts --dtypes float32   # prefix sharing
    .venv/bin/python benchmarks/generation.py --no-server --demo-prompts 64 --dtypes float32 --batches 16 32 64
                                                            # the default run's batch size: 64 prompts, split
"""

from __future__ import annotations

import argparse
import json
import os
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


def build_sami_prompts(n: int, tokenizer, *, demo: bool = False) -> list[str]:
    """`n` of SAMI's own generation prompts on bundled HH-RLHF helpful queries, as `sami.sampling` builds them.

    By default base-style dialogue prompts, each query under a pair of the paper's constitutions (all prompts
    share the template's instructions and format example); with `demo`, the default run's: chat style, each
    query under the positive and the antithesis constitution of the bundled `demo_checks`, rendered with the
    chat template.
    """
    from sami.constitutions import load_constitutions, sample_constitutions
    from sami.data import load_queries
    from sami.prompts import get_template, render_prompt
    from sami.sampling import query_rng

    style, cset_name, scheme = ("chat", "demo_checks", "opposite") if demo else ("base", "hh_opus", "paper-dialogue")
    template, cset = get_template("dialogue", style), load_constitutions(cset_name)
    prompts = []
    for q in load_queries("hh_helpful_train"):
        for c in sample_constitutions(cset, scheme, 2, query_rng(0, q.id), query=q):
            prompts.append(render_prompt(template.generation_prompt(c, q.query), tokenizer))
        if len(prompts) >= n:
            return prompts[:n]
    raise SystemExit(f"only {len(prompts)} prompts available")


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process, or of process `pid` (from /proc)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(run, repeats: int, pid: int | None = None) -> tuple[float, float, float]:
    """(best tokens/s, mean tokens/s, tokens per CPU-second) over `repeats` calls of `run() -> new tokens`.

    Tokens per CPU-second does not count time the process waited for a CPU, so on a busy machine it is a
    better estimate of what one idle core does (with one thread; with more, spinning threads inflate it).
    """
    rates, per_cpu = [], []
    for _ in range(repeats):
        cpu, start = cpu_seconds(pid), time.perf_counter()
        tokens = run()
        rates.append(tokens / (time.perf_counter() - start))
        per_cpu.append(tokens / max(cpu_seconds(pid) - cpu, 1e-9))
    return max(rates), sum(rates) / len(rates), max(per_cpu)


def time_hf(model, tokenizer, prompts, batch: int, new_tokens: int, repeats: int, prefill=None, share=True):
    """HFGenerator on `prompts` at `batch` (`prefill` prompts per prefill forward, None: its default; `share`:
    compute a common prompt prefix once), every sequence forced to `new_tokens` tokens."""
    from sami.generation.hf import HFGenerator

    gen = HFGenerator(model, tokenizer, batch_size=batch, prefill_batch_size=prefill, share_prefix=share)
    gen.generate(prompts[:1], max_new_tokens=2)  # warm-up

    def run() -> int:
        outs = gen.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        assert all(o.num_tokens == new_tokens for o in outs), [o.num_tokens for o in outs]
        return sum(o.num_tokens for o in outs)

    return measure(run, repeats)


def time_reference(model, tokenizer, prompts: list[str], batch: int, new_tokens: int, repeats: int):
    """The same measurement with transformers' own `model.generate` (left padding, greedy)."""
    import torch

    tokenizer.padding_side = "left"

    def run() -> int:
        for s in range(0, len(prompts), batch):
            enc = tokenizer(prompts[s : s + batch], return_tensors="pt", padding=True)
            model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        return len(prompts) * new_tokens

    with torch.inference_mode():
        model.generate(**tokenizer(prompts[:1], return_tensors="pt"), max_new_tokens=2)
        return measure(run, repeats)


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


def time_server(url: str, prompts: list[str], concurrency: int, new_tokens: int, repeats: int, pid: int | None):
    """The completions endpoint of a server, `concurrency` requests in flight, forced to `new_tokens` tokens."""
    from sami.generation.openai_backend import OpenAIGenerator

    gen = OpenAIGenerator(url, max_concurrency=concurrency, extra_body={"min_tokens": new_tokens})
    gen.generate(prompts[:1], max_new_tokens=2)  # warm-up
    result = measure(lambda: sum(o.num_tokens for o in gen.generate(prompts, max_new_tokens=new_tokens)), repeats, pid)
    return result if pid is not None else (*result[:2], float("nan"))


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
    p.add_argument(
        "--whole-prefill", action="store_true", help="also time the hf backend prefilling each batch in one forward"
    )
    p.add_argument(
        "--sami-prompts",
        action="store_true",
        help="use SAMI's base-style dialogue generation prompts (a shared ~100-token instruction prefix) instead of "
        "posts, and also time the hf backend without prefix sharing",
    )
    p.add_argument(
        "--demo-prompts",
        type=int,
        metavar="N",
        help="time the same N of the default run's chat generation prompts at every batch size (N / batch "
        "batches each), instead of `batch` prompts per batch size",
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
    n_prompts = max(max(args.batches), args.server_prompts)
    if args.demo_prompts:
        prompts = build_sami_prompts(max(n_prompts, args.demo_prompts), tokenizer, demo=True)
    elif args.sami_prompts:
        prompts = build_sami_prompts(n_prompts, tokenizer)
    else:
        prompts = build_prompts(tokenizer, n_prompts, args.prompt_tokens)
    mean_len = sum(len(tokenizer(x).input_ids) for x in prompts) / len(prompts)
    cpu = platform.processor() or platform.machine()
    print(f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"load average at start: {os.getloadavg()[0]:.1f} (other processes share these CPUs)")
    print(f"prompts: {len(prompts)} x ~{mean_len:.0f} tokens, {args.new_tokens} new tokens each")
    rows = []

    def report(engine: str, setting: str, n: int, result: tuple[float, float, float]) -> None:
        best, mean, per_cpu = result
        rows.append(
            {"engine": engine, "setting": setting, "prompts": n, "best": best, "mean": mean, "per_cpu_s": per_cpu}
        )
        print(f"| {engine} | {setting} | {n} | {best:.1f} | {mean:.1f} | {per_cpu:.1f} |", flush=True)

    print("| engine | setting | prompts | tokens/s (best) | tokens/s (mean) | tokens per CPU-s |")
    print("|---|---|---|---|---|---|")
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
            if args.demo_prompts:
                some = prompts[: args.demo_prompts]
            else:
                some = prompts[: args.prompts_at_batch_1 if batch == 1 else batch]
            result = time_hf(model, tokenizer, some, batch, args.new_tokens, args.repeats)
            report("sami hf", f"{dtype}, batch {batch}", len(some), result)
            if args.sami_prompts and batch > 1:
                result = time_hf(model, tokenizer, some, batch, args.new_tokens, args.repeats, share=False)
                report("sami hf, no prefix sharing", f"{dtype}, batch {batch}", len(some), result)
            if args.whole_prefill and batch > 8:
                result = time_hf(model, tokenizer, some, batch, args.new_tokens, args.repeats, prefill=batch)
                report("sami hf, one prefill forward", f"{dtype}, batch {batch}", len(some), result)
            if args.reference:
                result = time_reference(model, tokenizer, some, batch, args.new_tokens, args.repeats)
                report("transformers generate()", f"{dtype}, batch {batch}", len(some), result)
        del model

    if not args.no_server:
        proc, url = (None, args.base_url) if args.base_url else start_server(torch.get_num_threads())
        try:
            some = prompts[: args.server_prompts]
            for c in args.concurrency:
                result = time_server(url, some, c, args.new_tokens, args.repeats, proc.pid if proc else None)
                report("llama.cpp server (completions)", f"GGUF Q4_1, concurrency {c}", len(some), result)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=20)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
