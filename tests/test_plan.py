"""`sami plan`: the memory/time formulas on hand-computed cases, the shipped recipes' plans, the CLI's exit codes."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from sami.cli import main
from sami.cli_settings import read_yaml
from sami.errors import SamiInputError
from sami.model_shapes import BUNDLED, ModelShape, model_shape
from sami.plan import (
    GB,
    PlanSettings,
    TrainSetup,
    dtype_bytes,
    generation_memory,
    layer_activation_bytes,
    logits_bytes,
    optimizer_states,
    parse_devices,
    training_flops,
    training_memory,
)
from sami.plan_eval import server_parallel
from sami.plan_run import plan_run
from sami.plan_stage import vllm_generation
from sami.run_config import parse_config

TINY = ModelShape("tiny", vocab_size=10, hidden_size=4, intermediate_size=8, num_layers=2, num_heads=2,
                  num_kv_heads=1, head_dim=2, tied_embeddings=False)  # fmt: skip
MISTRAL = BUNDLED["mistralai/Mistral-7B-v0.1"]


def recipe(name: str):
    path = ROOT / "configs" / name
    return parse_config(read_yaml(path), source=str(path))


def test_parameter_counts_by_hand_and_published():
    # layer: q 4·4 + k, v 2·(4·2) + o 4·4 = 48; MLP 3·4·8 = 96; 2 norms 8 -> 152; ×2 layers; embedding + head 2·10·4
    assert TINY.layer_params == 152
    assert TINY.n_params == 2 * 152 + 80 + 4
    assert TINY.kv_bytes_per_token(2) == 2 * 2 * 1 * 2 * 2  # K and V · layers · kv heads · head_dim · bytes
    published = {
        "mistralai/Mistral-7B-v0.1": 7_241_732_096,
        "mistralai/Mixtral-8x7B-v0.1": 46_702_792_704,
        "meta-llama/Meta-Llama-3-8B": 8_030_261_248,
        "meta-llama/Meta-Llama-3-70B": 70_553_706_496,
        "default": 134_515_008,
    }
    for name, count in published.items():
        assert BUNDLED[name].n_params == count, name
    mixtral = BUNDLED["mistralai/Mixtral-8x7B-v0.1"]
    assert 12.8e9 < mixtral.active_params < 13.0e9  # 2 of 8 experts per token: the published 12.9 B
    assert MISTRAL.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2  # 128 KiB per token in bf16


def test_zero_model_state_bytes_per_parameter():
    n = MISTRAL.n_params
    base = dict(micro_batch=1, c=2, prompt_tokens=10, response_tokens=10, bf16=True, processes=8)
    adam = training_memory(MISTRAL, TrainSetup(**base, optim="adamw_torch", sharding="zero3"))
    # ZeRO §3.1: 2 + 2 + 12 bytes per parameter under mixed-precision Adam, divided over the 8 processes
    assert adam.parts["weights"] == pytest.approx(2 * n / 8)
    assert adam.parts["gradients"] == pytest.approx(2 * n / 8)
    assert adam.parts["master weights"] + adam.parts["optimizer state"] == pytest.approx(12 * n / 8)
    rms = training_memory(MISTRAL, TrainSetup(**base, optim="rmsprop", sharding="zero3"))
    assert rms.parts["optimizer state"] == pytest.approx(4 * n / 8)  # one fp32 state
    fsdp = training_memory(MISTRAL, TrainSetup(**base, optim="adamw_torch", sharding="fsdp"))
    state = ("weights", "gradients", "master weights", "optimizer state")
    assert sum(fsdp.parts.get(k, 0) for k in state) == pytest.approx(16 * n / 8)  # fp32 weights + grads + 2 moments
    ddp = training_memory(MISTRAL, TrainSetup(**{**base, "processes": 1}, optim="sgd"))
    assert "optimizer state" not in ddp.parts and ddp.parts["weights"] == 4 * n
    offload = training_memory(MISTRAL, TrainSetup(**base, optim="rmsprop", sharding="zero3", offload_optimizer=True))
    assert "optimizer state" not in offload.parts and "master weights" not in offload.parts
    assert offload.host == pytest.approx(8 * n)  # fp32 master + RMSprop state of all 8 shards on the host
    assert optimizer_states("paged_adamw_8bit") == (2, 1) and optimizer_states("adamw_torch_fused") == (2, 4)
    assert optimizer_states("rmsprop") == (1, 4) and optimizer_states("sgd") == (0, 4)


def test_activation_rows_and_logits():
    setup = TrainSetup(micro_batch=2, c=3, prompt_tokens=5, response_tokens=7)
    assert setup.tokens == 2 * 3 * (5 + 3 * 7)  # B·C·(P + C·R): pack_encoded's rows
    assert setup.logit_positions == 2 * 3 * (3 * 7 + 1)
    # per token and layer: 6·H + 5·H_q + 4·I elements (float32): 6·4 + 5·4 + 4·8 = 76
    assert layer_activation_bytes(TINY, 4) == 76 * 4
    # bf16: 5·H_q + 4·I elements of 2 bytes, and per RMSNorm its float32 input copy, normalised value and output
    assert layer_activation_bytes(TINY, 2) == (5 * 4 + 4 * 8) * 2 + 2 * (4 + 2 + 2) * 4
    plain = training_memory(TINY, setup)
    per_layer = 76 * 4 * setup.tokens
    assert plain.parts["activations"] == 2 * per_layer + per_layer + 2 * setup.tokens * 4 * 4
    ckpt = training_memory(TINY, TrainSetup(**{**setup.__dict__, "checkpointing": True}))
    assert ckpt.parts["activations"] == 2 * setup.tokens * 4 * 4 + per_layer + 2 * setup.tokens * 4 * 4
    assert ckpt.parts["activations"] < plain.parts["activations"]
    assert plain.parts["attention mask"] == 2 * 3 * 26**2
    # unchunked: kept float32 logits + three float32 [K, V] tensors in backward; chunked: three [chunk, V] buffers
    assert logits_bytes(TINY, 132, 4, 0) == (132 * 10 * 16, 0)
    assert logits_bytes(TINY, 132, 4, 32) == (3 * 32 * 10 * 4, 32)
    big = BUNDLED["meta-llama/Meta-Llama-3-70B"]
    chunked, chunk = logits_bytes(big, 16 * 2 * 701, 2, None)  # automatic: chunked above 2^26 logits
    assert chunk == 2**23 // 128256 == 65 and chunked == 3 * 65 * 128256 * 4  # 32 MiB float32 chunks


def test_generation_memory_and_flops():
    mem = generation_memory(MISTRAL, weight_bytes=2, batch=8, prompt_tokens=200, new_tokens=350)
    assert mem.parts["weights"] == MISTRAL.n_params * 2
    assert mem.parts["KV cache"] == 8 * 550 * 131072
    assert training_flops(TINY, 100, checkpointing=False) == 6 * TINY.n_params * 100
    assert training_flops(TINY, 100, checkpointing=True) == 8 * TINY.n_params * 100
    assert dtype_bytes(None) == 4 and dtype_bytes("bfloat16") == 2


def test_devices():
    d = parse_devices("8xH100-80GB")
    assert (d.count, d.name, d.memory, d.tflops, d.bandwidth_gbs) == (8, "H100", 80 * GB, 989.0, 3350.0)
    assert parse_devices("1xA100-40GB").bandwidth_gbs == 1555.0
    unknown = parse_devices("2xCPU-24GB")
    assert unknown.tflops is None and unknown.memory == 24 * GB
    with pytest.raises(SamiInputError, match="COUNTxNAME-MEMGB"):
        parse_devices("eight H100s")


def test_model_shape_sources(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    config = {"vocab_size": 10, "hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": False}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    shape = model_shape(str(folder))
    assert shape.n_params == TINY.n_params and shape.source.endswith("config.json")
    assert model_shape("mistralai/Mistral-7B-v0.1").n_params == MISTRAL.n_params
    with pytest.raises(SamiInputError, match="no config.json found"):
        model_shape("nobody/unknown-model")
    (folder / "config.json").write_text(json.dumps({"vocab_size": 10}))
    with pytest.raises(SamiInputError, match="not a llama-like model config"):
        model_shape(str(folder))


def test_70b_evaluation_refused_on_one_h100(monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = plan_run(recipe("tldr_llama3_70b_diverse.yaml"), PlanSettings(devices="1xH100-80GB"))
    stages = {s.name: s for s in plan.stages}
    ev, scoring = stages["evaluation responses"], stages["evaluation scoring (MI)"]
    assert not plan.fits and not ev.fits
    assert "8 × 1 (tensor × data parallel) > 1 devices" in ev.reason  # the recipe's vLLM engine over 8 devices
    assert ev.advice == ["more devices"]  # 141 GB of weights: no tensor parallel size of one 80 GB device fits
    assert not scoring.fits and "141.1 GB" in scoring.reason  # the MI scoring loads the bf16 weights whole
    assert any("device with ≥" in a for a in scoring.advice)
    assert not stages["training"].fits  # 8 processes on 1 device
    assert stages["judging"].fits and stages["judging"].memory is None  # the api judge runs elsewhere
    on8 = {s.name: s for s in plan_run(recipe("tldr_llama3_70b_diverse.yaml"), PlanSettings()).stages}
    assert on8["evaluation responses"].fits  # tensor parallel 8: 17.6 GB of weights per device
    spread = on8["evaluation scoring (MI)"]  # the recipe's device_map: auto spreads the layers over the 8 devices
    assert spread.fits and "device_map 'auto' over 8 devices" in spread.where
    raw = read_yaml(ROOT / "configs" / "tldr_llama3_70b_diverse.yaml")
    del raw["evaluation"]["device_map"]  # without it the scoring loads the whole model on one device
    whole = stages_of(parse_config(raw))["evaluation scoring (MI)"]
    assert not whole.fits and any("evaluation.device_map: auto" in a for a in whole.advice)
    assert spread.memory.parts["weights"] == pytest.approx(whole.memory.parts["weights"] / 8)
    # training at micro-batch 16 does not fit; a divisor of 16 keeps the 128 queries per optimizer step
    assert "per_device_train_batch_size: 8 with gradient_accumulation_steps: 2" in on8["training"].advice[0]


def without_eval_engine(name: str):
    """A shipped recipe with `evaluation.generation` left out: hf evaluation on one device, as before."""
    raw = read_yaml(ROOT / "configs" / name)
    del raw["evaluation"]["generation"]
    return parse_config(raw)


def stages_of(config, **settings) -> dict:
    return {s.name: s for s in plan_run(config, PlanSettings(**settings)).stages}


def test_recipe_evaluation_is_timed_on_the_engine_it_names(monkeypatch):
    monkeypatch.chdir(ROOT)
    settings = PlanSettings()
    devices = parse_devices(settings.devices)
    for name, tp in [("tldr_llama3_70b_diverse.yaml", 8), ("hh_mistral7b.yaml", 1), ("tldr_mixtral8x7b_weak.yaml", 4)]:
        config = recipe(name)
        plan = plan_run(config, settings)
        ev = next(s for s in plan.stages if s.name == "evaluation responses")
        assert ev.fits and ev.where.startswith(f"vLLM (evaluation.generation), tensor parallel {tp} ({tp} of 8")
        shape = model_shape(config.model.policy)
        assert ev.memory.parts["weights"] == pytest.approx(shape.n_params * 2 / tp)  # bf16, sharded over tp
        # from iteration 1 the stage generates only the evaluated model's responses (iteration 0 adds the contrast
        # ones; the baselines are stages of their own): the vLLM formula's time for them, far below the hf engine's
        # one-device time for the same responses
        n, p, r = plan.dims["eval queries"] * 4, plan.dims["P"], config.evaluation.max_new_tokens
        _, secs, _ = vllm_generation(shape, devices, settings, wb=2, tp=tp, utilization=0.9, n_prompts=n, p=p, r=r)
        assert ev.seconds[1] == pytest.approx(secs)
        hf = stages_of(without_eval_engine(name))["evaluation responses"]
        assert hf.where.startswith("hf in its own process, 1 of 8 devices")
        assert hf.seconds[1] > 10 * ev.seconds[1]
    hh = stages_of(recipe("hh_mistral7b.yaml"))
    assert hh["self-generation"].where.startswith("vLLM, tensor parallel 1")  # the run's engine, unchanged
    # the instruct baseline is still hf on one device (evaluation.generation does not reach it), once per run: its
    # own stage takes longer than every iteration's responses of the evaluated model together
    baseline = hh["baselines/instruct"]
    assert baseline.where.startswith("hf in its own process, 1 of 8 devices, batch 8, once per run")
    assert baseline.total_seconds > 10 * hh["evaluation responses"].total_seconds


def test_hf_evaluation_of_a_model_that_does_not_fit_is_told_what_to_set(monkeypatch):
    monkeypatch.chdir(ROOT)
    ev = stages_of(without_eval_engine("tldr_llama3_70b_diverse.yaml"))["evaluation responses"]
    assert not ev.fits and "141.1 GB" in ev.reason
    # 141 GB of bf16 weights: tensor parallel 4 leaves 35 GB per device (at most 0.7 of the 78 GB usable); its
    # self-generation is a server elsewhere, so a vLLM engine of the evaluation's own is advised
    assert "evaluation.generation: {backend: vllm, tensor_parallel_size: 4}" in ev.advice
    # Mixtral: the run's own vLLM engine (tensor parallel 4) is enough, and `run` says so
    mixtral = stages_of(without_eval_engine("tldr_mixtral8x7b_weak.yaml"))["evaluation responses"]
    assert not mixtral.fits
    assert "evaluation.generation: run (the run's vLLM engine, tensor parallel 4)" in mixtral.advice
    fits = stages_of(without_eval_engine("hh_mistral7b.yaml"))["evaluation responses"]
    assert fits.fits and not fits.advice and any("evaluation.generation: run" in n for n in fits.notes)


def test_evaluation_through_a_server_the_stage_starts(monkeypatch):
    assert server_parallel("vllm serve {model} --port {port}") == (1, 1)  # vLLM's defaults
    assert server_parallel("vllm serve {model} -tp 2 --data-parallel-size=4") == (2, 4)
    assert server_parallel("vllm serve {model} --tensor-parallel-size=8") == (8, 1)
    monkeypatch.chdir(ROOT)
    raw = read_yaml(ROOT / "configs" / "tldr_mistral7b_weak.yaml")
    serve = "vllm serve {model} --port {port} --data-parallel-size 8"
    raw["evaluation"]["generation"] = {"backend": "openai", "server": serve, "server_port": 8001}
    ev = stages_of(parse_config(raw))["evaluation responses"]
    tp1 = stages_of(recipe("tldr_mistral7b_weak.yaml"))["evaluation responses"]
    assert ev.fits and "tensor parallel 1 × data parallel 8" in ev.where
    assert ev.total_seconds < tp1.total_seconds / 2  # 8 replicas share each iteration's responses
    raw["evaluation"]["generation"]["server"] = serve.replace("--data-parallel-size 8", "-tp 4 -dp 4")
    too_many = stages_of(parse_config(raw))["evaluation responses"]
    assert not too_many.fits and "4 × 4 (tensor × data parallel) > 8 devices" in too_many.reason


def test_a_vllm_evaluation_engine_too_small_for_the_model_is_told_its_size(monkeypatch):
    monkeypatch.chdir(ROOT)
    raw = read_yaml(ROOT / "configs" / "tldr_llama3_70b_diverse.yaml")
    raw["evaluation"]["generation"]["tensor_parallel_size"] = 2  # 70.5 GB of weights per device: no KV cache left
    ev = stages_of(parse_config(raw))["evaluation responses"]
    assert not ev.fits and ev.advice == ["evaluation.generation.tensor_parallel_size: 4"]
    raw["evaluation"]["generation"] = {"backend": "openai", "server": "vllm serve {model} --port {port}"}
    served = stages_of(parse_config(raw))["evaluation responses"]  # a server the stage starts at vLLM's tp 1
    assert not served.fits and served.advice == ["--tensor-parallel-size 4 in evaluation.generation.server"]


def test_mistral_recipe_fits_8_h100(monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = plan_run(recipe("hh_mistral7b.yaml"), PlanSettings())
    assert plan.fits
    stages = {s.name: s for s in plan.stages}
    train = stages["training"].memory
    # docs/scaling.md: 16 B/param sharded over 8 = 14.5 GB of model state per GPU
    state = train.parts["weights"] + train.parts["gradients"] + train.parts["optimizer state"]
    assert state / GB == pytest.approx(14.5, abs=0.1)
    # with hf evaluation (the default) its responses dominate the run, 7 of 8 devices idle
    hf = stages_of(without_eval_engine("hh_mistral7b.yaml"))
    times = {name: s.total_seconds for name, s in hf.items()}
    assert times["evaluation responses"] > times["self-generation"] + times["training"]
    assert "1 of 8 devices" in hf["evaluation responses"].where


def test_training_advice_names_a_change_that_fits(monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = plan_run(recipe("tldr_mixtral8x7b_weak.yaml"), PlanSettings())
    train = next(s for s in plan.stages if s.name == "training")
    assert not train.fits and "offload the optimizer" in train.advice[0]
    more = plan_run(recipe("tldr_mixtral8x7b_weak.yaml"), PlanSettings(devices="8xH200-141GB"))
    assert next(s for s in more.stages if s.name == "training").fits


def test_cli_exit_codes(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["plan", "configs/demo.yaml", "--devices", "1xH100-80GB"]) == 0
    out = capsys.readouterr().out
    assert "evaluation responses" in out and "estimated wall time" in out
    assert main(["plan", "configs/tldr_llama3_70b_diverse.yaml", "--devices", "1xH100-80GB"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("sami plan: evaluation scoring (MI): does not fit: needs") for line in err)
    assert all(line.startswith("sami plan: ") for line in err)  # one line per stage, no traceback
    assert main(["plan", "configs/demo.yaml", "--devices", "lots"]) == 2
    assert "COUNTxNAME-MEMGB" in capsys.readouterr().err
    assert main(["plan", "configs/demo.yaml", "--train-mfu", "2"]) == 2  # a settings field out of range


def test_run_dry_run_prints_the_plan(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    out_dir = tmp_path / "run"
    assert (
        main(["run", "configs/demo.yaml", "--dry-run", "--devices", "1xA100-40GB", "--output-dir", str(out_dir)]) == 0
    )
    out = capsys.readouterr().out
    assert "run   iter-1/train" in out  # the stage table first
    assert "plan of this config on 1xA100-40GB" in out and "estimated wall time" in out
    assert not out_dir.exists()  # a dry run writes nothing


def test_offload_is_checked_against_stated_host_memory(monkeypatch):
    monkeypatch.chdir(ROOT)
    raw = read_yaml(ROOT / "configs" / "tldr_llama3_70b_diverse.yaml")
    raw["training"]["per_device_train_batch_size"] = 4  # fits the GPUs with the optimizer offloaded
    config = parse_config(raw)
    train = next(s for s in plan_run(config, PlanSettings()).stages if s.name == "training")
    assert train.fits and train.memory.host / GB == pytest.approx(8 * 70.55, abs=0.5)  # fp32 master + RMSprop
    small = next(s for s in plan_run(config, PlanSettings(host_memory_gb=512)).stages if s.name == "training")
    assert not small.fits and "host RAM" in small.reason


def test_a_baseline_is_planned_once_as_its_own_stage(monkeypatch, capsys, tmp_path):
    """The instruct baseline of the mistral recipe is the table's `baselines/instruct`: one plan, one time (not per
    iteration), its own model's memory; `--dry-run` lists the stage once, before iteration 0's responses."""
    monkeypatch.chdir(ROOT)
    plan = plan_run(recipe("hh_mistral7b.yaml"), PlanSettings())
    names = [s.name for s in plan.stages]
    assert names.count("baselines/instruct") == 1
    baseline = plan.stages[names.index("baselines/instruct")]
    assert len(baseline.seconds) == 1 and baseline.seconds[0] > 0 and "once per run" in baseline.where
    assert "Mistral-7B-Instruct" in baseline.notes[0] and baseline.fits
    responses = plan.stages[names.index("evaluation responses")].seconds
    assert responses[1] == responses[2] == responses[3]  # no iteration generates the baseline
    assert main(["run", "configs/hh_mistral7b.yaml", "--dry-run", "--output-dir", str(tmp_path / "run")]) == 0
    lines = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("run ")]
    assert lines.count("baselines/instruct") == 1
    assert lines.index("baselines/instruct") < lines.index("iter-0/responses")


def test_a_baseline_that_does_not_fit_one_device_is_told_what_to_set(monkeypatch):
    """An hf baseline's stage holds its model whole on one device, its MI forward included (the larger of the two)."""
    monkeypatch.chdir(ROOT)
    baseline = stages_of(recipe("hh_mistral7b.yaml"), devices="1xA10-24GB")["baselines/instruct"]
    assert not baseline.fits and "activations" in baseline.reason  # the MI forward's, 8 queries × 4 rows
    assert baseline.advice == [
        "a smaller evaluation.batch_size",
        "evaluation.baselines.instruct.generation: {backend: vllm, ...} (no baseline MI)",
    ]
