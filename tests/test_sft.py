"""The SFT comparison: examples from samples.jsonl, TRL's SFTTrainer, the run's stages and report."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("trl", reason="TRL is the `compare` extra (make test installs it)")

from test_dpo import POSITIVE, QUERIES, TEMPLATE, opposite_samples, record, run_with_comparison  # noqa: E402

from sami.comparisons.sft import sft_config, sft_records, train_sft  # noqa: E402
from sami.errors import SamiInputError  # noqa: E402
from sami.io import read_jsonl, write_jsonl  # noqa: E402
from sami.models import load_model, load_tokenizer  # noqa: E402
from sami.prompts import get_template  # noqa: E402
from sami.run_config import parse_config  # noqa: E402


def test_examples_are_the_bare_query_and_the_positive_response(tmp_path):
    path = opposite_samples(tmp_path / "samples.jsonl")
    examples = sft_records(path, template=TEMPLATE)
    assert [e["id"] for e in examples] == ["q0", "q1", "q2", "q3"]
    for i, ex in enumerate(examples):
        assert ex["prompt"] == f"Human: {QUERIES[i]}\n\nAssistant:"  # no constitution, no instruction
        assert ex["completion"] == f" Short answer {i}."  # the positive constitution's response, not the antithesis
    ablation = sft_records(path, prompt="constitution")
    assert ablation[0]["prompt"] == TEMPLATE.training_prompt(POSITIVE, QUERIES[0])
    assert "Constitution:" in ablation[0]["prompt"]


def test_chat_prompt_keeps_the_query_system_text_and_separators(tmp_path, default_tokenizer):
    chat = get_template("dialogue", "chat")
    rec = record(0, [POSITIVE, POSITIVE.flipped()], ["Eggs boil fast.", "Well, eggs, you see, ..."], ["\n", " "])
    rec["meta"]["system"] = "You are a pirate."
    write_jsonl(tmp_path / "s.jsonl", [rec])
    (ex,) = sft_records(tmp_path / "s.jsonl", template=chat, tokenizer=default_tokenizer)
    assert ex["completion"] == "\nEggs boil fast."
    assert "You are a pirate." in ex["prompt"] and QUERIES[0] in ex["prompt"]
    assert "constitution" not in ex["prompt"].lower()


def test_bad_samples_name_the_line(tmp_path):
    rec = record(0, [POSITIVE, POSITIVE.flipped()], ["", "long"])
    write_jsonl(tmp_path / "s.jsonl", [rec])
    with pytest.raises(SamiInputError, match=r"s.jsonl:1: the positive constitution's response is empty"):
        sft_records(tmp_path / "s.jsonl", template=TEMPLATE)
    write_jsonl(tmp_path / "q.jsonl", [{k: v for k, v in rec.items() if k != "query"}])
    with pytest.raises(SamiInputError, match=r"q.jsonl:1: missing field 'query'"):
        sft_records(tmp_path / "q.jsonl", template=TEMPLATE)


def test_bad_prompt_forms_are_refused_by_both_methods(tmp_path):
    from sami.comparisons.dpo import dpo_records

    path = opposite_samples(tmp_path / "samples.jsonl")
    with pytest.raises(SamiInputError, match=r"^prompt: expected one of \('query', 'constitution'\), got 'both'$"):
        sft_records(path, prompt="both", template=TEMPLATE)
    with pytest.raises(SamiInputError, match=r"^prompt: expected one of \('constitution', 'query'\), got 'both'$"):
        dpo_records(path, prompt="both", template=TEMPLATE)
    for records in (sft_records, dpo_records):
        with pytest.raises(SamiInputError, match=r"^prompt: 'query' needs the prompt template the samples were made"):
            records(path, prompt="query")


def test_two_sft_steps_raise_the_positive_response_under_the_bare_query(tmp_path, tiny_model_dir):
    samples = opposite_samples(tmp_path / "samples.jsonl")
    config = sft_config(
        tmp_path / "unused", per_device_train_batch_size=2, max_steps=4, learning_rate=1e-2, use_cpu=True, seed=0
    )
    out = train_sft(tiny_model_dir, samples, tmp_path / "sft", config, template=TEMPLATE)
    history = json.loads((out / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]
    assert not list(out.glob("checkpoint-*"))
    tokenizer = load_tokenizer(out)
    ex = sft_records(samples, template=TEMPLATE)[0]

    def completion_logprob(model) -> float:
        prompt = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
        full = tokenizer(ex["prompt"] + ex["completion"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([full])).logits[0, :-1].log_softmax(-1)
        targets = torch.tensor(full[1:])
        return logits[torch.arange(len(targets)), targets][len(prompt) - 1 :].sum().item()

    assert completion_logprob(load_model(out)) > completion_logprob(load_model(tiny_model_dir)) + 1.0


def test_comparisons_sft_config_section():
    base = {"data": {"train": [{"bundled": "hh_helpful_train"}], "eval": [{"bundled": "hh_helpful_test"}]}}
    sft = parse_config({**base, "comparisons": {"sft": {}}}).comparisons.sft
    assert (sft.prompt, sft.max_steps, sft.learning_rate) == ("query", None, None)
    with pytest.raises(SamiInputError, match=r"comparisons.sft.trainer_args: unknown SFTConfig field 'bogus'"):
        parse_config({**base, "comparisons": {"sft": {"trainer_args": {"bogus": 1}}}})


def test_run_with_sft_writes_the_comparison_and_reports_it(tmp_path, tiny_model_dir):
    run = run_with_comparison(tmp_path, tiny_model_dir, {"sft": {}})
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert {f"iter-1/sft/{s}" for s in ("train", "responses", "judgments", "metrics")} <= set(stages)
    assert not any("/dpo/" in s for s in stages)
    train = run / "iter-1" / "sft" / "train"
    assert [h["step"] for h in json.loads((train / "log_history.json").read_text()) if "loss" in h] == [1, 2]
    ev = run / "iter-1" / "sft" / "eval"
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["model_ref"] == str(train) and set(metrics["win_rates"]) == {"base", "sami"}
    assert len(read_jsonl(ev / "judgments-sami.jsonl")) == 3
    summary = json.loads((run / "report" / "summary.json").read_text())
    sft = summary["iterations"][1]["comparisons"]["sft"]
    assert sft["train"]["steps"] == 2 and sft["vs_sami"]["n"] == 3
    assert "SAMI vs SFT" in (run / "report" / "summary.md").read_text()


def test_cli_train_method_sft(tmp_path, tiny_model_dir, capsys):
    from sami.cli import main

    samples = opposite_samples(tmp_path / "samples.jsonl")
    out = tmp_path / "cli"
    argv = ["train", "--method", "sft", "--samples", str(samples), "--model", str(tiny_model_dir)]
    argv += ["--output-dir", str(out), "--max-steps", "1", "--per-device-train-batch-size", "2"]
    assert main([*argv, "--sft-prompt", "constitution"]) == 0
    assert [h["step"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h] == [1]
    assert load_model(out).config.vocab_size == load_model(tiny_model_dir).config.vocab_size
    assert main([*argv, "--beta", "0.5"]) == 2
    assert "--beta: not used by --method sft" in capsys.readouterr().err
