"""A miniature of the HH recipe on every visible GPU, stage by stage, with each stage's time and peak memory.

`benchmarks/gpu_smoke.sh` runs it. It builds a 1B-class random llama (the bundled tokenizer; saved locally, no hub),
then `sami run` on a copy of `configs/hh_mistral7b.yaml` shrunk to one iteration of 2 optimizer steps: vLLM self-
generation, training under `accelerate launch` with the shipped FSDP config on all visible GPUs (bf16; a sharded
resume checkpoint after step 1), export, evaluation (its responses through the run's vLLM engine) with the base
model as baseline and the policy as its own local judge; then it reloads the exported checkpoint and generates from
it. While the run goes, a sampler thread records the GPU memory in use (`nvidia-smi`, every GPU) or, with `--cpu`,
the resident memory of the process tree; each stage's window comes from `manifest.json` (`started_at` /
`finished_at`).

`--cpu` is a dry mode for machines without a GPU: a tiny llama, the hf backend, 2 gloo processes (MULTI_CPU; no
FSDP there), float32. It checks the script's logic, not the GPU path. Writes OUT/smoke.json and OUT/smoke.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import yaml

from sami.generation import parse_generation
from sami.generation.factory import make_generator

ROOT = Path(__file__).resolve().parents[1]


def gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def build_model(out: Path, cpu: bool) -> Path:
    """A random llama with the bundled tokenizer: ~1.2 B parameters on GPU, a tiny one with --cpu."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sami.models import default_model_path, load_tokenizer

    tokenizer = load_tokenizer(default_model_path())
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    if not cpu:
        size = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32)
    config = LlamaConfig(
        vocab_size=len(tokenizer), num_key_value_heads=max(1, size["num_attention_heads"] // 4),
        max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **size,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32 if cpu else torch.bfloat16)
    path = out / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_config(model: Path, out: Path, cpu: bool, n_gpus: int) -> Path:
    """`configs/hh_mistral7b.yaml`, shrunk: one iteration of 2 steps on a few queries, a local judge."""
    cfg = yaml.safe_load((ROOT / "configs" / "hh_mistral7b.yaml").read_text())
    cfg["name"] = "gpu-smoke"
    cfg["model"] = {"policy": str(model), "dtype": "float32" if cpu else "bfloat16"}
    cfg["sampling"].update(max_new_tokens=32, chunk_size=16)
    cfg["data"]["train"] = [{"bundled": f"hh_{s}_train", "subset": s} for s in ("helpful", "harmless")]
    cfg["data"]["eval"] = [{"bundled": f"hh_{s}_test", "subset": s} for s in ("helpful", "harmless")]
    cfg["data"].update(train_per_iteration=8 * max(1, n_gpus), eval_limit=4)
    cfg["filters"] = {"leftovers": [], "refusal_prefixes": [], "drop_identical": False}  # a random model
    cfg["generation"] = {"backend": "hf", "batch_size": 16} if cpu else {"backend": "vllm", "dtype": "bfloat16"}
    if not cpu:
        cfg["generation"].update(gpu_memory_utilization=0.5, max_model_len=2048)
    cfg["training"].update(per_device_train_batch_size=2, bf16=not cpu, report_to=[], learning_rate=1e-5)
    cfg["training"]["save_steps"] = 1  # a resume checkpoint after step 1: fsdp.yaml's sharded one (each rank's shards)
    cfg["iterations"] = {"count": 1, "steps": [2], "train_from": "base"}
    judge = {"kind": "local", "model": str(model)}
    cfg["evaluation"] = {"judge": judge, "baselines": {}, "max_new_tokens": 32, "dtype": cfg["model"]["dtype"]}
    if not cpu:  # the recipe's evaluation engine: the run's vLLM (--cpu: hf, split over the 2 launched processes)
        cfg["evaluation"]["generation"] = "run"
    cfg["launcher"] = {"kind": "accelerate", "num_processes": 2 if cpu else n_gpus, "config": "fsdp"}
    path = out / "smoke.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class MemorySampler(threading.Thread):
    """(time, bytes in use) every `period` s: the sum over GPUs (nvidia-smi), or the process tree's RSS (--cpu)."""

    def __init__(self, cpu: bool, period: float = 0.5):
        super().__init__(daemon=True)
        self.cpu, self.period, self.samples, self.stop = cpu, period, [], threading.Event()

    def measure(self) -> int:
        if self.cpu:
            me = psutil.Process()
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            return total
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        return sum(int(x) for x in out.split()) * 2**20

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), self.measure()))
            time.sleep(self.period)


def stage_table(run_dir: Path, samples: list[tuple[float, int]], start: float) -> list[dict]:
    """Per finished stage, in run order: seconds (from the previous stage's end; the manifest keeps only
    `finished_at`, to the second, so the first stage includes the run's start-up) and the peak memory sampled in
    that window."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    ends = [  # the manifest lists stages in the order they finished
        (datetime.strptime(rec["finished_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp(), name)
        for name, rec in manifest.get("stages", {}).items()
        if rec.get("finished_at")
    ]
    rows, t0 = [], start
    for t1, name in ends:
        peak = max((m for t, m in samples if t0 - 1 <= t <= t1 + 1), default=None)
        rows.append({"stage": name, "seconds": round(t1 - t0, 1), "peak_gib": peak and round(peak / 2**30, 2)})
        t0 = t1
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-smoke"))
    parser.add_argument("--cpu", action="store_true", help="dry mode without a GPU (tiny model, hf, 2 CPU ranks)")
    args = parser.parse_args()
    n_gpus = 0 if args.cpu else gpu_count()
    if not args.cpu and n_gpus == 0:
        print("gpu_smoke: no GPU visible (nvidia-smi lists none); use --cpu for the dry mode", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t = time.time()
    model = build_model(args.out, args.cpu)
    timings["build model"] = round(time.time() - t, 1)
    cfg = run_config(model, args.out, args.cpu, n_gpus)
    sampler = MemorySampler(args.cpu)
    sampler.start()
    run_dir = args.out / "run"
    t = run_start = time.time()
    proc = subprocess.run([sys.executable, "-m", "sami.cli", "run", str(cfg), "--output-dir", str(run_dir)])
    timings["sami run"] = round(time.time() - t, 1)
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        print(f"gpu_smoke: sami run failed (exit {proc.returncode}); see above", file=sys.stderr)
        return proc.returncode
    t = time.time()

    gen = make_generator(parse_generation(backend="hf", model=str(run_dir / "iter-1" / "train"), dtype=None))
    text = gen.generate(["Hello, how are you?"], max_new_tokens=8)[0].text
    timings["reload + generate"] = round(time.time() - t, 1)
    info = json.loads((run_dir / "iter-1" / "train" / "train_info.json").read_text())
    result = {
        "device": "cpu (dry mode)" if args.cpu else f"{n_gpus} GPU(s)",
        "stages": stage_table(run_dir, sampler.samples, run_start),
        "timings_s": timings,
        "train_info": info,
        "reloaded_sample": text,
        "peak_gib_overall": round(max((m for _, m in sampler.samples), default=0) / 2**30, 2),
    }
    (args.out / "smoke.json").write_text(json.dumps(result, indent=2))
    lines = [f"device: {result['device']}", "", "| stage | seconds | peak memory (GiB) |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['seconds']} | {r['peak_gib']} |" for r in result["stages"]]
    (args.out / "smoke.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({k: result[k] for k in ("timings_s", "train_info")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
