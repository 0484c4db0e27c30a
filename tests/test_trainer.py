"""SAMITrainer, SAMIConfig, load_samples and train_sami."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model

from sami.constitutions import bundled_constitution_path
from sami.data import bundled_queries_path
from sami.errors import SamiInputError
from sami.io import write_jsonl
from sami.logprobs import batched_logprob_matrices, logprob_matrix
from sami.loss import sami_loss
from sami.models import LoraSettings, apply_lora, load_model
from sami.trainer import (
    SAMICollator,
    SAMIConfig,
    SAMITrainer,
    export_checkpoint,
    load_samples,
    train_sami,
    validate_samples,
)

TOY = [
    {
        "id": f"q{i}",
        "prompts": [f"Be kind and brief. Question {i}: how are you?", f"Be rude. Question {i}: how are you?"],
        "responses": [" Fine, thanks!", " None of your business."] if i % 2 else [" Very well.", " Go away."],
    }
    for i in range(4)
]


def config(tmp_path, **overrides) -> SAMIConfig:
    defaults = dict(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=2,
        max_steps=1,
        learning_rate=1e-2,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return SAMIConfig(**{**defaults, **overrides})


def real_records(n=2):
    """Real TL;DR posts under the paper's strong-writer principles; responses are real post openings."""
    principles = json.loads(bundled_constitution_path("tldr_opus").read_text())["principles"]
    posts = [json.loads(line)["query"] for line in bundled_queries_path("tldr_validation").open()][: 3 * n]
    records = []
    for i in range(n):
        prompts = [
            f"Principle: {principles[0]['principle']}\n\nPOST: {posts[i][:200]}\n\nTL;DR:",
            f"Principle: {principles[0]['antithesis']}\n\nPOST: {posts[i][:200]}\n\nTL;DR:",
        ]
        responses = [" " + posts[n + i][:60].strip(), " " + posts[2 * n + i][:120].strip()]
        records.append({"id": f"tldr-{i}", "prompts": prompts, "responses": responses})
    return records


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------- config, samples, collation


def test_config_defaults_and_validation(tmp_path):
    cfg = SAMIConfig(output_dir=str(tmp_path))
    # issue 15 changed the EOS default: `eos="generated"` (EOS only where the model ended) replaces include_eos=True.
    assert (cfg.logprob_normalize, cfg.eos, cfg.beta, cfg.truncate_prompt_left) == ("mean", "generated", 0.0, False)
    assert cfg.include_eos is None
    assert cfg.remove_unused_columns is False and cfg.optim == "adamw_torch"
    for bad, field in [
        ({"logprob_normalize": "max"}, "logprob_normalize"),
        ({"n_constitutions": 1}, "n_constitutions"),
        ({"beta": -0.1}, "beta"),
        ({"max_response_length": 0}, "max_response_length"),
    ]:
        with pytest.raises(SamiInputError, match=field):
            SAMIConfig(output_dir=str(tmp_path), **bad)
    # TrainingArguments' own checks come out as input errors too (one line, exit 2 in the CLI)
    with pytest.raises(SamiInputError, match="training settings: At most one of fp16 and bf16"):
        SAMIConfig(output_dir=str(tmp_path), bf16=True, fp16=True)


def test_bf16_on_the_cpu_is_autocast_not_an_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    cfg = SAMIConfig(output_dir=str(tmp_path), bf16=True)  # transformers alone refuses this without use_cpu
    assert cfg.bf16 and cfg.use_cpu


def test_load_samples_reads_records(tmp_path):
    path = tmp_path / "samples.jsonl"
    write_jsonl(path, [{**r, "query": "extra fields are ignored", "meta": {"k": 1}} for r in TOY])
    ds = load_samples(path)
    assert len(ds) == 4 and set(ds.column_names) == {"id", "prompts", "responses"}
    assert ds[1]["responses"] == TOY[1]["responses"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompts": ["a", "b"], "responses": ["c", "d"]}, "missing field 'id'"),
        ({"id": "x", "prompts": ["a", "b"], "responses": ["c"]}, "2 prompts but 1 responses"),
        ({"id": "x", "prompts": ["a"], "responses": ["c"]}, "at least 2 constitutions"),
        ({"id": "x", "prompts": ["a", "b"], "responses": ["c", ""]}, "response 1 is empty"),
        ({"id": "x", "prompts": "ab", "responses": ["c", "d"]}, "'prompts' must be a list of strings"),
        ({"id": "q0", "prompts": ["a", "b"], "responses": ["c", "d"]}, "duplicate id 'q0'"),
    ],
)
def test_load_samples_errors_name_file_and_line(tmp_path, record, message):
    path = tmp_path / "samples.jsonl"
    write_jsonl(path, [TOY[0], record])
    with pytest.raises(SamiInputError, match=f"samples.jsonl:2: .*{message}"):
        load_samples(path)


def test_collator_errors_name_the_example(default_tokenizer):
    long = {**TOY[1], "responses": [TOY[1]["responses"][0], " word" * 50]}
    with pytest.raises(SamiInputError, match="example q1: response 1 has 51 tokens > max_response_length=20"):
        SAMICollator(default_tokenizer, eos="always", max_response_length=20)([TOY[0], long])  # 50 words + EOS
    with pytest.raises(SamiInputError, match="example q0: 2 prompts but n_constitutions=3"):
        SAMICollator(default_tokenizer, n_constitutions=3)([TOY[0]])
    with pytest.raises(SamiInputError, match="example q0: prompt 0 has .* > max_prompt_length=4"):
        SAMICollator(default_tokenizer, max_prompt_length=4)([TOY[0]])
    batch = SAMICollator(default_tokenizer, max_prompt_length=4, truncate_prompt_left=True)(TOY[:2])
    assert batch["num_truncated_prompts"] == 4 and batch["ids"] == ["q0", "q1"]
    assert batch["input_ids"].shape[0] == 4  # B * C rows


def test_train_sami_rejects_bad_samples_before_loading_the_model(tmp_path):
    path = tmp_path / "samples.jsonl"
    write_jsonl(path, [TOY[0], {**TOY[1], "responses": [" ok", " word" * 40]}])
    cfg = config(tmp_path, max_response_length=16, eos="always")  # 40 tokens + EOS
    with pytest.raises(SamiInputError, match="example q1: response 1 has 41 tokens"):
        train_sami("/nonexistent/model", path, tmp_path / "out", cfg, tokenizer_ref="default")


# ---------------------------------------------------------------- training


def test_gradient_accumulation_matches_the_full_batch(tmp_path, default_tokenizer):
    dataset = load_samples(write_toy(tmp_path))
    results = []
    for batch, accumulation in ((4, 1), (1, 4)):
        model = make_tiny_model(len(default_tokenizer), seed=1).train()
        start = snapshot(model)
        cfg = config(
            tmp_path,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=1.0,
        )
        SAMITrainer(model=model, args=cfg, train_dataset=dataset, processing_class=default_tokenizer).train()
        results.append(snapshot(model))
    moved = max((results[0][n] - start[n]).abs().max().item() for n in start)
    assert moved > 1e-3  # the step is large enough for a wrong scaling to show
    for name in start:
        torch.testing.assert_close(results[1][name], results[0][name], atol=1e-5, rtol=0)


def test_lora_trains_only_adapter_weights(tmp_path, default_tokenizer):
    model = apply_lora(make_tiny_model(len(default_tokenizer), seed=2), LoraSettings(r=4)).train()
    start = snapshot(model)
    cfg = config(tmp_path, max_steps=2)
    toy_trainer(model, cfg, default_tokenizer, tmp_path).train()
    after = snapshot(model)
    lora = [n for n in start if "lora_" in n]
    assert lora and all(not torch.equal(start[n], after[n]) for n in lora)
    assert all(torch.equal(start[n], after[n]) for n in start if "lora_" not in n)


def test_checkpoint_reloads_with_identical_logprobs(tmp_path, default_tokenizer):
    model = make_tiny_model(len(default_tokenizer), seed=5).train()
    trainer = toy_trainer(model, config(tmp_path), default_tokenizer, tmp_path)
    trainer.train()
    folder = export_checkpoint(trainer.model, default_tokenizer, tmp_path / "ckpt")
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    reloaded = load_model(folder).eval()
    model.eval()
    with torch.no_grad():
        a = logprob_matrix(model, default_tokenizer, TOY[0]["prompts"], TOY[0]["responses"])
        b = logprob_matrix(reloaded, default_tokenizer, TOY[0]["prompts"], TOY[0]["responses"])
    assert torch.equal(a, b)


def test_train_sami_with_lora_exports_a_merged_model(tmp_path, tiny_model_dir, default_tokenizer):
    samples = write_toy(tmp_path)
    out = train_sami(tiny_model_dir, samples, tmp_path / "out", config(tmp_path, max_steps=2), lora=LoraSettings(r=4))
    assert out == tmp_path / "out"
    assert (out / "config.json").exists() and not (out / "adapter_config.json").exists()
    history = json.loads((out / "log_history.json").read_text())
    steps = [h for h in history if "sami/loss" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for key in ("sami/loss_row", "sami/loss_col", "sami/mi_bound", "sami/accuracy", "logps/diag", "logps/offdiag"):
        assert key in steps[0]
    assert steps[1]["num_tokens"] > steps[0]["num_tokens"] > 0
    trained, base = load_model(out).eval(), load_model(tiny_model_dir).eval()
    with torch.no_grad():
        a = logprob_matrix(trained, default_tokenizer, TOY[0]["prompts"], TOY[0]["responses"])
        b = logprob_matrix(base, default_tokenizer, TOY[0]["prompts"], TOY[0]["responses"])
    assert (a - b).abs().max() > 1e-4  # the merged adapter is in the saved weights


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4)], ids=["full", "lora"])
def test_kl_to_the_reference_starts_at_zero_and_grows(tmp_path, default_tokenizer, lora):
    model = make_tiny_model(len(default_tokenizer), seed=6).train()
    if lora is not None:
        model = apply_lora(model, lora)
    cfg = config(tmp_path, max_steps=3, beta=0.1, learning_rate=3e-2)
    trainer = toy_trainer(model, cfg, default_tokenizer, tmp_path)
    trainer.train()
    kls = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    assert len(kls) == 3
    assert kls[0] == pytest.approx(0.0, abs=1e-6)
    assert kls[2] > 1e-6
    losses = [h for h in trainer.state.log_history if "kl" in h]
    assert losses[2]["loss"] == pytest.approx(losses[2]["sami/loss"] + 0.1 * losses[2]["kl"], rel=1e-4)


def test_rmsprop_and_evaluation(tmp_path, default_tokenizer):
    dataset = load_samples(write_toy(tmp_path))
    model = make_tiny_model(len(default_tokenizer), seed=7).train()
    cfg = config(tmp_path, optim="rmsprop", learning_rate=1e-3, per_device_eval_batch_size=2)
    trainer = SAMITrainer(
        model=model, args=cfg, train_dataset=dataset, eval_dataset=dataset, processing_class=default_tokenizer
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert isinstance(getattr(trainer.optimizer, "optimizer", trainer.optimizer), torch.optim.RMSprop)
    assert metrics["eval_sami/loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
    assert 0.0 <= metrics["eval_sami/accuracy"] <= 1.0


@pytest.mark.slow
def test_real_data_steps_lower_the_loss_and_move_every_parameter(tmp_path, default_model_path, default_tokenizer):
    from datasets import Dataset

    records = real_records()
    model = load_model(default_model_path).train()
    start = snapshot(model)
    cfg = config(tmp_path, max_steps=2, learning_rate=2e-5, per_device_train_batch_size=2)
    trainer = SAMITrainer(
        model=model, args=cfg, train_dataset=Dataset.from_list(records), processing_class=default_tokenizer
    )
    trainer.train()
    # Every step sees the whole batch: the loss logged at step 1 is the loss before any update.
    before = trainer.state.log_history[0]["sami/loss"]
    with torch.no_grad():
        matrix = batched_logprob_matrices(
            model, default_tokenizer, [r["prompts"] for r in records], [r["responses"] for r in records]
        )
    after = sami_loss(matrix).loss.item()
    assert after < before - 1e-3
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p.detach(), start[n])]
    assert not unchanged


def write_toy(tmp_path):
    path = tmp_path / "samples.jsonl"
    write_jsonl(path, TOY)
    return path


def toy_trainer(model, cfg, tokenizer, tmp_path) -> SAMITrainer:
    dataset = load_samples(write_toy(tmp_path))
    return SAMITrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer)


def test_validate_samples_counts_truncations(tmp_path, default_tokenizer):
    cfg = config(tmp_path, max_prompt_length=5, truncate_prompt_left=True)
    assert validate_samples(load_samples(write_toy(tmp_path)), default_tokenizer, cfg) == 8


def test_cli_train_writes_a_loadable_checkpoint(tmp_path, tiny_model_dir):
    from sami.cli import main

    out = tmp_path / "cli-out"
    args = ["train", "--samples", str(write_toy(tmp_path)), "--model", str(tiny_model_dir), "--output-dir", str(out)]
    args += ["--max-steps", "1", "--per-device-train-batch-size", "2", "--optim", "sgd", "--learning-rate", "0.1"]
    assert main(args) == 0
    history = json.loads((out / "log_history.json").read_text())
    assert history[0]["step"] == 1 and "sami/loss" in history[0]
    assert load_model(out).config.vocab_size == load_model(tiny_model_dir).config.vocab_size
