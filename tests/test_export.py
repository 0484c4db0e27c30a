"""`sami export`: a run's checkpoint as a clean model folder with a Hub model card that huggingface_hub reads."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from sami.cli import main
from sami.export import ExportSettings, export_run
from sami.model_card import base_model, datasets_of


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """One SAMI iteration of a tiny random model on the default run's checkable principles, judged by rules."""
    from test_pipeline import tiny_config, write_config

    out = tmp_path_factory.mktemp("export") / "run"
    config = tiny_config(
        tiny_model_dir,
        name="tiny-export",
        constitutions="demo_checks",
        sampling={"scheme": "opposite", "n_constitutions": 2, "max_new_tokens": 6, "chunk_size": 4},
        iterations={"count": 1, "steps": [1]},
        evaluation={"judge": {"kind": "rules"}, "max_new_tokens": 6, "contrast": False},
    )
    assert main(["run", str(write_config(out.parent / "cfg.yaml", config)), "--output-dir", str(out)]) == 0
    return out


def test_export_writes_a_folder_that_from_pretrained_loads_and_generates(tiny_run, tmp_path):
    out = export_run(tiny_run, tmp_path / "tiny-sami", ExportSettings(license="apache-2.0"))
    for name in ("config.json", "model.safetensors", "generation_config.json", "README.md", "constitutions.json"):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "sami_config.yaml").read_text())["name"] == "tiny-export"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # the chat template travels with the tokenizer
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    trained = AutoModelForCausalLM.from_pretrained(tiny_run / "iter-1" / "train").eval()
    for name, p in trained.state_dict().items():
        assert torch.equal(p, exported.state_dict()[name]), name
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    ids = torch.tensor([prompt if isinstance(prompt, list) else prompt["input_ids"]])
    a = exported.generate(ids, max_new_tokens=5, do_sample=False)
    b = trained.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(a, b) and a.shape[1] == ids.shape[1] + 5
    assert not list(tmp_path.glob(".tiny-sami.*"))  # no temporary folder left


def test_model_card_validates_and_carries_the_runs_numbers(tiny_run, tmp_path):
    out = export_run(tiny_run, tmp_path / "card", ExportSettings(license="apache-2.0"))
    card = ModelCard.load(out / "README.md")  # parses the metadata; malformed model-index raises
    data = card.data
    assert data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.pipeline_tag == "text-generation" and "sami" in data.tags
    assert data.base_model is None  # a local random model: nothing to name
    assert data.datasets == ["Anthropic/hh-rlhf"]  # the bundled HH-RLHF slices
    metrics = json.loads((tiny_run / "iter-1" / "eval" / "metrics.json").read_text())
    results = {r.metric_type: r for r in data.eval_results if r.metric_type != "adherence"}
    assert results["win_rate"].metric_value == round(100 * metrics["win_rates"]["base"]["win_rate"], 2)
    assert results["mutual_information"].metric_value == round(metrics["mi"], 3)
    adherence = [r.metric_value for r in data.eval_results if r.metric_type == "adherence"]
    assert adherence == [round(metrics["adherence"]["positive"], 4), round(metrics["adherence"]["antithesis"], 4)]
    assert data.to_dict()["model-index"][0]["name"] == "card"
    text = card.text
    for principle in json.loads((tiny_run / "constitutions.json").read_text())["principles"]:
        assert principle["principle"] in text and principle["antithesis"] in text
    assert "iteration exported | 1 of 1" in text
    assert "### Metrics per iteration" in text and "### Adherence to checkable principles" in text


def test_card_metadata_for_the_default_model_and_hub_sources():
    assert base_model("default") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    assert base_model("mistralai/Mistral-7B-v0.1") == ("mistralai/Mistral-7B-v0.1", None)
    assert base_model("/models/x") == (None, None) and base_model("m.gguf") == (None, None)
    config = {
        "data": {
            "train": [{"dataset": "Anthropic/hh-rlhf", "data_dir": "helpful-base"}, {"path": "mine.jsonl"}],
            "eval": [{"bundled": "tldr_validation"}],
        }
    }
    assert datasets_of(config) == ["Anthropic/hh-rlhf", "openai/summarize_from_feedback"]


def test_cli_export_in_bfloat16_prints_the_upload_command(tiny_run, tmp_path, capsys):
    out = tmp_path / "bf16"
    assert main(["export", str(tiny_run), str(out), "--dtype", "bfloat16", "--repo-id", "me/tiny-sami"]) == 0
    printed = capsys.readouterr().out
    assert f"hf upload me/tiny-sami {out} . --repo-type model" in printed
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert main(["export", str(tiny_run), str(out)]) == 2  # exists: refused
    assert "exists and is not empty (use --overwrite" in capsys.readouterr().err
    assert main(["export", str(tiny_run), str(tmp_path / "x"), "--iteration", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("iteration 3 has no finished checkpoint (trained: 1)") and "\n" not in err
