"""One forward + backward of the SAMI loss at the paper's shapes: chunked vs unchunked prefix-shared vs reference.

Variants (same inputs, same normalisation: mean log-prob per response token, EOS included):

* default: what training runs with its defaults (`training.logprob_chunk_size: null`): prefix-shared rows, the
  boolean sdpa mask, and the chunked head only where the kept logits would exceed 256 MiB;

* chunked: `sami.logprobs.packed_logprobs` with the chunked head forced on (`auto_chunk_size` positions per
  chunk; the automatic default uses it only once the logits would exceed 256 MiB): C rows (each prompt once
  followed by all C responses), a boolean sdpa mask, the LM head + float32 log-softmax in chunks of positions
  that keep only the target log-probs (`sami.lm_head`, backward recomputes a chunk's logits);
* unchunked: the same rows with the former path: dense additive float32 [R, 1, L, L] mask, full-vocabulary
  logits at every response position kept for backward (`chunk_size=0, dense_mask=True`);
* reference: C² right-padded rows (prompt_i + response_j), full-vocabulary logits at every position, float32
  log-softmax, gather of the response tokens (a direct implementation of the paper).

Shapes (P prompt tokens, R response tokens, C constitutions) default to the issue's four. Inputs are real:
bundled TL;DR posts (`tldr_validation`) under the paper's strong-writer principles (C sign patterns);
responses are R - 1 tokens of real post text + EOS. Models: the bundled SmolLM2-135M (`default`) or a random
llama (`random:VOCAB`: hidden 256, 4 layers, untied head; token ids of the default tokenizer taken modulo VOCAB).

Every (model, shape, variant) cell runs in a fresh subprocess that loads the model, builds the inputs, measures
this process's fp32 matmul rate (best of a few 2048³ products: the machine's attainable peak right now), runs
`--reps` + 1 steps and reads its own resident-set high-water mark (`VmHWM`). The first step runs under
`torch.utils.flop_counter.FlopCounterMode` (matmul and attention FLOPs, forward and backward; the CPU flash
attention kernel is registered here with the same formula as the GPU one) and is the timed step only when
`--reps 0`. "growth" is the peak minus the resident set just before the first step. A cell whose full logits
and their gradient alone would not fit in the available memory is not run (the table says so).

    .venv/bin/python benchmarks/train_step.py --models default random:8192 random:131072 --out results/x.json
    .venv/bin/python benchmarks/train_step.py --shapes 600,350,8 --variants chunked --gradient-checkpointing
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

from sami.lm_head import auto_chunk_size
from sami.logprobs import encode_examples, pack_encoded, packed_logprobs, unwrap_model
from sami.loss import sami_loss
from sami.models import default_model_path, load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CONSTITUTION = ROOT / "src" / "sami" / "assets" / "constitutions" / "tldr_opus.json"
SHAPES = [(400, 60, 2), (200, 350, 2), (200, 350, 4), (600, 350, 8)]
VARIANTS = ("reference", "unchunked", "chunked", "default")


def _posts_ids(tokenizer) -> list[int]:
    from sami.data import load_queries

    ids: list[int] = []
    for q in load_queries("tldr_validation"):
        ids += tokenizer(q.query + "\n\n", add_special_tokens=False).input_ids
    return ids


def build_inputs(tokenizer, c: int, prompt_tokens: int = 400, response_tokens: int = 60) -> tuple[list, list]:
    """C prompts (principles in constitution i's sign pattern + a real post, ≈ `prompt_tokens`) and C responses
    (`response_tokens` - 1 tokens of real post text; EOS is appended by the scorer)."""
    principles = json.loads(CONSTITUTION.read_text())["principles"]
    text = _posts_ids(tokenizer)
    suffix = "\n\nTL;DR:"
    prompts = []
    for i in range(c):
        header = f"Constitution {i + 1}. Write a summary of the Reddit post that follows these principles:\n"
        # constitution i: principle k in its positive form unless bit k of i is set; as many as fit in half
        lines: list[str] = []
        for k, p in enumerate(principles):
            line = f"{k + 1}. {p['antithesis'] if (i >> k) & 1 else p['principle']}"
            if len(tokenizer(header + "\n".join([*lines, line])).input_ids) > prompt_tokens // 2 and lines:
                break
            lines.append(line)
        prefix = header + "\n".join(lines) + "\n\nPOST: "
        budget = max(1, prompt_tokens - len(tokenizer(prefix + suffix).input_ids))
        prompts.append(prefix + tokenizer.decode(text[:budget]) + suffix)
    responses = []
    for j in range(c):
        start = 5000 + j * response_tokens * 2  # other posts than the prompt's
        responses.append(" " + tokenizer.decode(text[start : start + response_tokens - 1]).strip())
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


def prefix_matrices(model, tokenizer, prompts, responses, **kwargs) -> torch.Tensor:
    """B prefix-shared [C, C] matrices through `packed_logprobs` (kwargs: chunk_size, dense_mask)."""
    enc = encode_examples(tokenizer, prompts, responses, eos="always")  # EOS scored, as in the reference
    packed = pack_encoded(enc, pad_token_id=tokenizer.pad_token_id)
    c = len(prompts[0])
    return packed_logprobs(model, packed, normalize="mean", **kwargs).view(len(prompts), c, c)


def run_variant(variant: str, model, tokenizer, prompts, responses) -> torch.Tensor:
    if variant == "reference":
        return reference_matrices(model, tokenizer, prompts, responses)
    if variant == "unchunked":
        return prefix_matrices(model, tokenizer, prompts, responses, chunk_size=0, dense_mask=True)
    if variant == "default":
        return prefix_matrices(model, tokenizer, prompts, responses, chunk_size=None)
    chunk = auto_chunk_size(unwrap_model(model).config.vocab_size)  # chunked whatever the logits' size
    return prefix_matrices(model, tokenizer, prompts, responses, chunk_size=chunk)


class ModuloTokenizer:
    """The default tokenizer with ids taken modulo a random model's vocabulary (only ids are needed)."""

    def __init__(self, tokenizer, vocab: int):
        self.tok, self.vocab = tokenizer, vocab
        for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
            value = getattr(tokenizer, name)
            setattr(self, name, None if value is None else value % vocab)

    def __call__(self, texts, **kwargs):
        out = self.tok(texts, **kwargs)
        ids = out.input_ids
        mapped = (
            [x % self.vocab for x in ids] if isinstance(texts, str) else [[x % self.vocab for x in r] for r in ids]
        )
        return argparse.Namespace(input_ids=mapped)

    def decode(self, ids):
        return self.tok.decode(ids)


def load(model_ref: str):
    """`default` (the bundled model), a model folder, or `random:VOCAB` (a small random llama)."""
    tokenizer = load_tokenizer(default_model_path())
    if model_ref.startswith("random:"):
        from transformers import LlamaConfig, LlamaForCausalLM

        vocab = int(model_ref.split(":")[1])
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=8192,
            tie_word_embeddings=False,
            attn_implementation="sdpa",
        )
        return LlamaForCausalLM(config).train(), ModuloTokenizer(tokenizer, vocab), tokenizer
    path = default_model_path() if model_ref == "default" else model_ref
    return load_model(path).train(), tokenizer, tokenizer


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def guard_memory(min_available_gb: float = 1.5) -> None:
    """Stop this process before the machine runs out of memory (it is shared)."""
    while True:
        if available_gib() < min_available_gb:
            print(json.dumps({"error": f"stopped: less than {min_available_gb} GiB of memory left"}), flush=True)
            os._exit(3)
        time.sleep(0.02)


def matmul_gflops(n: int = 2048, reps: int = 4) -> float:
    """Best fp32 matmul rate of this process now (GFLOP/s)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def flop_counter():
    """`FlopCounterMode` that also counts the CPU flash-attention kernel (same formula as the GPU one)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    def addmm_(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    mapping = {aten.addmm_: addmm_}  # in-place addmm is not in torch's registry
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return FlopCounterMode(display=False, custom_mapping=mapping)


def child(variant: str, shape: tuple[int, int, int], model_ref: str, reps: int, checkpointing: bool) -> None:
    """Fresh process: one cell. Prints one JSON line."""
    threading.Thread(target=guard_memory, daemon=True).start()
    model, tokenizer, text_tok = load(model_ref)
    if checkpointing:
        model.gradient_checkpointing_enable()
    p, r, c = shape
    prompts, responses = build_inputs(text_tok, c, p, r)
    p_len = statistics.mean(len(tokenizer(x).input_ids) for x in prompts)
    r_len = statistics.mean(len(tokenizer(x, add_special_tokens=False).input_ids) + 1 for x in responses)
    peak_rate = matmul_gflops()
    before = status_mb("VmRSS")
    times, flops = [], 0
    for rep in range(reps + 1):
        model.zero_grad(set_to_none=True)
        counter = flop_counter() if rep == 0 else None
        start = time.perf_counter()
        if counter is not None:
            with counter:
                matrix = run_variant(variant, model, tokenizer, [prompts], [responses])
                sami_loss(matrix).loss.backward()
            flops = counter.get_total_flops()
        else:
            matrix = run_variant(variant, model, tokenizer, [prompts], [responses])
            sami_loss(matrix).loss.backward()
        elapsed = time.perf_counter() - start
        if rep or not reps:
            times.append(elapsed)
    peak = status_mb("VmHWM")
    peak_rate = max(peak_rate, matmul_gflops())
    out = {
        "peak_mb": peak,
        "growth_mb": peak - before,
        "times": times,
        "flops": flops,
        "matmul_peak_gflops": peak_rate,
        "prompt_tokens": p_len,
        "response_tokens": r_len,
        "matrix": matrix.detach()[0].tolist(),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(out))


def logits_gib(variant: str, shape: tuple[int, int, int], vocab: int) -> float:
    """Bytes (GiB) of a variant's kept float32 logits and their gradient alone (0 for the chunked head)."""
    p, r, c = shape
    positions = {"reference": c * c * (p + r), "unchunked": c * (c * r + 1)}.get(variant, 0)
    return 2 * positions * vocab * 4 / 2**30


def measure(variant, shape, model_ref, reps, checkpointing, vocab) -> dict:
    need = logits_gib(variant, shape, vocab)
    if need > available_gib() - 2:
        return {
            "error": f"not run: its logits and their gradient alone need {need:.1f} GiB, "
            f"{available_gib():.1f} GiB available"
        }
    cmd = [sys.executable, __file__, "--child", variant, "--shapes", ",".join(map(str, shape))]
    cmd += ["--models", model_ref, "--reps", str(reps)] + (["--gradient-checkpointing"] if checkpointing else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0:
        last = (lines or out.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {out.returncode}: {last[-200:]}"}
    return json.loads(lines[-1])


def vocab_of(model_ref: str) -> int:
    if model_ref.startswith("random:"):
        return int(model_ref.split(":")[1])
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(default_model_path() if model_ref == "default" else model_ref).vocab_size


def table(rows: list[dict]) -> str:
    head = (
        "| model | P, R, C | variant | time (s) | vs reference | vs unchunked | peak RSS (GiB) | growth (GiB) "
        "| GFLOP | FLOP ceiling vs reference | fraction of matmul peak | max abs diff |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    ref_flops = {(x["model"], x["shape"]): x["flops"] for x in rows if x["variant"] == "reference" and "flops" in x}
    ceiling = {
        (x["model"], x["shape"], x["variant"]): ref_flops[(x["model"], x["shape"])] / x["flops"]
        for x in rows
        if x.get("flops") and (x["model"], x["shape"]) in ref_flops
    }
    lines = []
    for x in rows:
        if "error" in x:
            lines.append(f"| {x['model']} | {x['shape']} | {x['variant']} | {x['error']} ||||||||| ")
            continue
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(
            f"| {x['model']} | {x['shape']} | {x['variant']} | {x['time_s']:.2f} | {fmt(x['vs_reference'], '.2f')}× "
            f"| {fmt(x['vs_unchunked'], '.2f')}× | {x['peak_mb'] / 1024:.2f} | {x['growth_mb'] / 1024:.2f} "
            f"| {x['flops'] / 1e9:.0f} | {fmt(ceiling.get((x['model'], x['shape'], x['variant'])), '.2f')}× "
            f"| {x['fraction_of_peak']:.2f} | {fmt(x['max_abs_diff'], '.1e')} |"
        )
    return head + "\n".join(lines)


def targets(rows: list[dict]) -> str:
    """The issue's ratio targets from measured rows (random models: hidden 256, untied head)."""
    ok = {(x["model"], x["shape"], x["variant"]): x for x in rows if "error" not in x}
    lines = []
    for shape in sorted({x["shape"] for x in rows}):
        small, big = ok.get(("random:8192", shape, "chunked")), ok.get(("random:131072", shape, "chunked"))
        if small and big:
            p, r, c = (int(v) for v in shape.split(","))
            grads = 2 * (131072 - 8192) * 256 * 4 / 2**20  # embedding + head gradients (MiB)
            extra = big["growth_mb"] - small["growth_mb"] - grads
            positions = c * c * big["response_tokens"]
            logits = positions * 131072 * 4 / 2**20
            lines.append(
                f"* {shape}: 128k-vocab growth over the 8k step beyond the {grads:.0f} MiB of extra weight "
                f"gradients: {extra:.0f} MiB = {extra / logits:.3f} × one full fp32 logits tensor "
                f"([{positions:.0f} × 131072] = {logits:.0f} MiB; target < 0.25)"
            )
    for x in rows:
        if x["variant"] in ("chunked", "default") and "error" not in x and x.get("vs_reference"):
            vs = f", {x['vs_unchunked']:.2f}× the unchunked path's" if x.get("vs_unchunked") else ""
            lines.append(
                f"* {x['model']} {x['shape']}: {x['variant']} {x['vs_reference']:.2f}× the reference speed{vs}"
            )
    return "\n".join(line for line in lines if line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["default"], help="default, a folder, or random:VOCAB")
    parser.add_argument("--shapes", nargs="+", default=[",".join(map(str, s)) for s in SHAPES], help="P,R,C")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--reps", type=int, default=1, help="timed steps after the warm-up step (0: time that one)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="for every variant")
    parser.add_argument("--out", help="append the raw rows (JSON lines) to this file")
    parser.add_argument("--report", help="print the table and targets of a rows file written by --out")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        rows = [json.loads(line) for line in Path(args.report).read_text().splitlines() if line.strip()]
        print(table(rows) + "\n\n" + targets(rows))
        return
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    if args.child:
        child(args.child, shapes[0], args.models[0], args.reps, args.gradient_checkpointing)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible", flush=True)
    rows = []
    for model_ref in args.models:
        vocab = vocab_of(model_ref)
        for shape in shapes:
            cells = {}
            for v in args.variants:
                cells[v] = measure(v, shape, model_ref, args.reps, args.gradient_checkpointing, vocab)
                print(
                    model_ref, shape, v, json.dumps({k: x for k, x in cells[v].items() if k != "matrix"}), flush=True
                )
            for v, cell in cells.items():
                row = {"model": model_ref, "shape": ",".join(map(str, shape)), "variant": v, **cell}
                row["checkpointing"] = args.gradient_checkpointing
                if "error" not in cell:
                    row["time_s"] = statistics.median(cell["times"])
                    ratio = {}
                    for base in ("reference", "unchunked"):
                        ok = base in cells and "error" not in cells[base]
                        ratio[base] = statistics.median(cells[base]["times"]) / row["time_s"] if ok else None
                    row["vs_reference"], row["vs_unchunked"] = ratio["reference"], ratio["unchunked"]
                    row["fraction_of_peak"] = cell["flops"] / row["time_s"] / (cell["matmul_peak_gflops"] * 1e9)
                    base = cells.get("unchunked") if v != "unchunked" else cells.get("chunked")
                    ok = base is not None and "error" not in base
                    row["max_abs_diff"] = (
                        (torch.tensor(cell["matrix"]) - torch.tensor(base["matrix"])).abs().max().item()
                        if ok
                        else None
                    )
                rows.append(row)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
