"""The DPO comparison: pairs from samples.jsonl, TRL training, `sami train --method dpo`, the run's stages."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

pytest.importorskip("trl", reason="TRL is the `compare` extra (make test installs it)")

from sami.comparisons.dpo import dpo_config, dpo_records, query_prompt, rejected_index, train_dpo  # noqa: E402
from sami.constitutions import Constitution, load_constitutions  # noqa: E402
from sami.errors import SamiInputError  # noqa: E402
from sami.io import read_jsonl, write_jsonl  # noqa: E402
from sami.models import load_model  # noqa: E402
from sami.prompts import get_template  # noqa: E402
from sami.run_config import parse_config  # noqa: E402

CSET = load_constitutions("demo_checks")  # principles brief, no_commas
POSITIVE = Constitution(tuple((p, True) for p in CSET.principles))
TEMPLATE = get_template("dialogue", "base")
QUERIES = ["How do I boil an egg?", "What is the capital of France?", "Name a fruit.", "Why is the sky blue?"]


def record(i: int, constitutions: list[Constitution], responses: list[str], separators=None) -> dict:
    query = QUERIES[i % len(QUERIES)]
    meta = {"separators": separators} if separators is not None else {}
    return {
        "id": f"q{i}",
        "query": query,
        "constitutions": [c.to_dict() for c in constitutions],
        "prompts": [TEMPLATE.training_prompt(c, query) for c in constitutions],
        "responses": responses,
        "meta": meta,
    }


def opposite_samples(path, n: int = 4):
    """The `opposite` scheme's records: positive + antithesis per query."""
    records = [
        record(i, [POSITIVE, POSITIVE.flipped()], [f"Short answer {i}.", f"Well, a long, winding answer {i}, ok."])
        for i in range(n)
    ]
    write_jsonl(path, records)
    return path


# ---------------------------------------------------------------- the dataset
def test_opposite_records_pair_positive_with_antithesis(tmp_path):
    path = opposite_samples(tmp_path / "samples.jsonl")
    pairs = dpo_records(path)
    assert [p["id"] for p in pairs] == ["q0", "q1", "q2", "q3"]
    for i, pair in enumerate(pairs):
        assert pair["prompt"] == TEMPLATE.training_prompt(POSITIVE, QUERIES[i])
        assert pair["prompt"].endswith("Assistant:")
        assert pair["chosen"] == f" Short answer {i}."  # default separator after a prompt ending in a letter
        assert pair["rejected"] == f" Well, a long, winding answer {i}, ok."
        assert pair["rejected_index"] == 1


def test_query_form_drops_the_constitution(tmp_path):
    pairs = dpo_records(opposite_samples(tmp_path / "samples.jsonl"), prompt="query", template=TEMPLATE)
    assert pairs[1]["prompt"] == f"Human: {QUERIES[1]}\n\nAssistant:"
    assert "Constitution" not in pairs[1]["prompt"] and "System:" not in pairs[1]["prompt"]
    chat = get_template("dialogue", "chat")

    class Tok:  # records the messages the chat template gets
        chat_template = "x"

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            return json.dumps(messages)

    assert json.loads(query_prompt(chat, "Hi?", Tok())) == [{"role": "user", "content": "Hi?"}]


def test_rejected_is_the_most_flipped_constitution_and_separators_are_kept(tmp_path):
    one = POSITIVE.flipped({"brief"})
    cs = [POSITIVE, one, POSITIVE.flipped(), one]
    assert rejected_index([c.to_dict() for c in cs]) == 2
    shuffled = Constitution(tuple(reversed(POSITIVE.flipped().items)))  # order does not matter, names do
    assert rejected_index([POSITIVE.to_dict(), one.to_dict(), shuffled.to_dict()]) == 2
    records = [
        record(0, cs, ["a", "b", "c", "d"], separators=["\n", " ", "  ", " "]),
        record(1, [POSITIVE, POSITIVE], ["same", "signs"]),  # no pair: skipped
    ]
    write_jsonl(tmp_path / "s.jsonl", records)
    pairs = dpo_records(tmp_path / "s.jsonl")
    assert len(pairs) == 1 and (pairs[0]["chosen"], pairs[0]["rejected"]) == ("\na", "  c")
    write_jsonl(tmp_path / "none.jsonl", records[1:])
    with pytest.raises(SamiInputError, match="no preference pairs"):
        dpo_records(tmp_path / "none.jsonl")
    write_jsonl(tmp_path / "bad.jsonl", [{k: v for k, v in records[0].items() if k != "constitutions"}])
    with pytest.raises(SamiInputError, match=r"bad.jsonl:1: missing field 'constitutions'"):
        dpo_records(tmp_path / "bad.jsonl")


# ---------------------------------------------------------------- training
def args(tmp_path, **overrides):
    defaults = dict(
        per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2, use_cpu=True, disable_tqdm=True, seed=0
    )
    return dpo_config(tmp_path / "unused", **{**defaults, **overrides})


def test_two_dpo_steps_change_the_weights_and_write_a_loadable_checkpoint(tmp_path, tiny_model_dir):
    samples = opposite_samples(tmp_path / "samples.jsonl")
    out = train_dpo(tiny_model_dir, samples, tmp_path / "dpo", args(tmp_path, save_steps=1))
    before, after = load_model(tiny_model_dir), load_model(out)
    moved = [n for n, p in after.named_parameters() if not torch.equal(p, before.get_parameter(n))]
    assert len(moved) == len(list(after.parameters()))
    history = json.loads((out / "log_history.json").read_text())
    steps = [h for h in history if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2]
    assert steps[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is the reference
    assert steps[1]["rewards/margins"] > 0  # chosen gained on rejected
    assert not list(out.glob("checkpoint-*"))


def test_interrupted_dpo_resumes_to_the_uninterrupted_weights(tmp_path, tiny_model_dir, monkeypatch):
    import sami.trainer

    samples = opposite_samples(tmp_path / "samples.jsonl")
    full = train_dpo(tiny_model_dir, samples, tmp_path / "full", args(tmp_path, max_steps=4, save_steps=2))

    class Killed(Exception):
        pass

    class KillAtStep3(sami.trainer._NoFinalCheckpoint):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise Killed

    with monkeypatch.context() as m:
        m.setattr(sami.trainer, "_NoFinalCheckpoint", KillAtStep3)
        with pytest.raises(Killed):
            train_dpo(tiny_model_dir, samples, tmp_path / "cut", args(tmp_path, max_steps=4, save_steps=2))
    assert (tmp_path / "cut" / "checkpoint-2").is_dir()
    resumed = train_dpo(
        tiny_model_dir, samples, tmp_path / "cut", args(tmp_path, max_steps=4, save_steps=2), resume=True
    )
    a, b = load_model(full), load_model(resumed)
    for name, p in a.named_parameters():
        torch.testing.assert_close(p, b.get_parameter(name), rtol=0, atol=1e-6)
    assert [h["step"] for h in json.loads((resumed / "log_history.json").read_text()) if "loss" in h] == [1, 2, 3, 4]


def test_cli_train_method_dpo(tmp_path, tiny_model_dir, capsys):
    from sami.cli import main

    samples = opposite_samples(tmp_path / "samples.jsonl")
    out = tmp_path / "cli"
    argv = ["train", "--method", "dpo", "--samples", str(samples), "--model", str(tiny_model_dir)]
    argv += ["--output-dir", str(out), "--max-steps", "1", "--per-device-train-batch-size", "2", "--beta", "0.5"]
    assert main([*argv, "--dpo-prompt", "query"]) == 0
    assert load_model(out).config.vocab_size == load_model(tiny_model_dir).config.vocab_size
    assert [h["step"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h] == [1]
    assert main([*argv, "--eos", "always"]) == 2
    assert "--eos: SAMI-only option(s), not used by --method dpo" in capsys.readouterr().err


# ---------------------------------------------------------------- config and the run
def test_comparisons_config_section():
    base = {"data": {"train": [{"bundled": "hh_helpful_train"}], "eval": [{"bundled": "hh_helpful_test"}]}}
    assert parse_config(base).comparisons is None
    dpo = parse_config({**base, "comparisons": {"dpo": {}}}).comparisons.dpo
    assert (dpo.beta, dpo.prompt, dpo.max_steps, dpo.learning_rate) == (0.1, "constitution", None, None)
    with pytest.raises(SamiInputError, match=r"comparisons.dpo.prompt"):
        parse_config({**base, "comparisons": {"dpo": {"prompt": "both"}}})
    with pytest.raises(SamiInputError, match=r"comparisons.dpo.trainer_args: unknown DPOConfig field 'bogus'"):
        parse_config({**base, "comparisons": {"dpo": {"trainer_args": {"bogus": 1}}}})


def run_with_comparison(tmp_path, tiny_model_dir, comparisons: dict):
    """`sami run` of one tiny iteration (2 steps, the `opposite` scheme) with `comparisons`; returns the run folder."""
    from test_pipeline import tiny_config

    from sami.cli import main

    config = tiny_config(
        tiny_model_dir,
        iterations={"count": 1, "steps": [2]},
        comparisons=comparisons,
        sampling={"scheme": "opposite", "n_constitutions": 2, "max_new_tokens": 6, "chunk_size": 2},
    )
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "cfg.yaml"), "--output-dir", str(run)]) == 0
    return run


def test_run_with_dpo_writes_the_comparison(tmp_path, tiny_model_dir):
    from sami.cli import main

    run = run_with_comparison(tmp_path, tiny_model_dir, {"dpo": {"beta": 0.1}})
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert {f"iter-1/dpo/{s}" for s in ("train", "responses", "judgments", "metrics")} <= set(stages)
    train = run / "iter-1" / "dpo" / "train"
    history = json.loads((train / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2]  # the SAMI iteration's 2 steps
    assert not (run / "iter-1" / "dpo" / "train.partial").exists()
    ev = run / "iter-1" / "dpo" / "eval"
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["model_ref"] == str(train) and metrics["mi"] is not None
    assert set(metrics["win_rates"]) == {"base", "sami"}
    judged = read_jsonl(ev / "judgments-sami.jsonl")
    assert len(judged) == metrics["n_queries"] == 3
    # the "sami" baseline's responses are π_1's from iter-1/eval, not generated again
    pi_1 = {r["query_id"]: r["response"] for r in read_jsonl(run / "iter-1" / "eval" / "responses.jsonl")
            if r["side"] == "model"}  # fmt: skip
    sami_side = [r for r in read_jsonl(ev / "responses.jsonl") if r["side"] == "sami"]
    assert {r["query_id"]: r["response"] for r in sami_side} == pi_1
    assert {r["model"] for r in sami_side} == {"iter-1"}  # copied (a generated one names the checkpoint)
    # a rerun redoes nothing
    mtime = (ev / "metrics.json").stat().st_mtime_ns
    assert main(["run", str(tmp_path / "cfg.yaml"), "--output-dir", str(run)]) == 0
    assert (ev / "metrics.json").stat().st_mtime_ns == mtime


def test_lora_dpo_exports_a_merged_model_that_moved(tmp_path, tiny_model_dir):
    from sami.models import LoraSettings

    samples = opposite_samples(tmp_path / "samples.jsonl")
    out = train_dpo(tiny_model_dir, samples, tmp_path / "lora", args(tmp_path, save_steps=0), lora=LoraSettings(r=4))
    assert not (out / "adapter_config.json").exists()  # a plain model folder, adapter merged
    before, after = load_model(tiny_model_dir), load_model(out)
    moved = [n for n, p in after.named_parameters() if not torch.equal(p, before.get_parameter(n))]
    assert moved and all("proj" in n for n in moved)  # only adapted linear layers changed
