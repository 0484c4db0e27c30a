"""`sami export --gguf`: the GGUF a llama.cpp server serves, greedy tokens equal to the transformers model's."""

from __future__ import annotations

import json
import shutil
import urllib.request

import gguf
import pytest
import torch
import yaml
from conftest import ROOT, serve_gguf

from sami.cli import main
from sami.errors import SamiInputError
from sami.gguf_export import write_gguf
from sami.models import default_gguf_path, load_model

PROMPTS = [
    "The capital of France is",
    "Human: How do I boil an egg?\n\nAssistant:",
    "<|im_start|>user\nName three fruits.<|im_end|>\n<|im_start|>assistant\n",  # special tokens: the chat template's
]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, default_model_path):
    """A run folder whose iteration 1 is the bundled model itself (the default run's config), for the export."""
    run = tmp_path_factory.mktemp("gguf") / "run"
    (run / "iter-1").mkdir(parents=True)
    shutil.copytree(default_model_path, run / "iter-1" / "train")
    (run / "config.yaml").write_text((ROOT / "configs" / "demo.yaml").read_text())
    return run


@pytest.mark.slow
def test_exported_gguf_serves_the_same_greedy_tokens(default_run, default_tokenizer, tmp_path, capsys):
    out = tmp_path / "smol-sami"
    assert main(["export", str(default_run), str(out), "--gguf", "f16"]) == 0
    path = out / "smol-sami-f16.gguf"
    assert str(out) in capsys.readouterr().out
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"  # from the bundled GGUF it descends from
    assert {t.tensor_type.name for t in reader.tensors if len(t.shape) > 1} == {"F16"}
    # transformers' greedy tokens with the weights rounded to f16, as the GGUF stores them
    model = load_model(default_run / "iter-1" / "train").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(p.half().float())
    with serve_gguf(path, alias="smol-sami") as base_url:
        for prompt in PROMPTS:
            ids = default_tokenizer(prompt, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                greedy = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids) :]
            body = {"model": "smol-sami", "prompt": prompt, "max_tokens": 12, "temperature": 0.0, "logprobs": 1}
            body["repeat_penalty"] = 1.0  # the server's default is 1.1, which is not greedy decoding
            request = urllib.request.Request(
                f"{base_url}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.load(response)
            assert answer["usage"]["prompt_tokens"] == len(ids)  # llama.cpp tokenized the prompt the same way
            assert answer["usage"]["completion_tokens"] == len(greedy) == 12
            choice = answer["choices"][0]
            assert choice["logprobs"]["tokens"] == [default_tokenizer.decode([i]) for i in greedy.tolist()], prompt
            assert choice["text"] == default_tokenizer.decode(greedy)


@pytest.mark.slow
def test_tokenizer_built_from_the_hf_files_matches_the_bundled_gguf(default_model_path, tmp_path):
    """Without a reference GGUF the vocabulary comes from the tokenizer files: the same as llama.cpp's converter
    wrote into the bundled GGUF (only the pre-tokenizer name cannot be known)."""
    path = write_gguf(default_model_path, tmp_path / "hf.gguf", "f16")
    ours, bundled = gguf.GGUFReader(str(path)), gguf.GGUFReader(str(default_gguf_path()))
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
        "llama.block_count",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.rope.dimension_count",
    ]:
        assert ours.fields[key].contents() == bundled.fields[key].contents(), key
    assert ours.fields["tokenizer.ggml.pre"].contents() == "default"
    assert {t.name for t in ours.tensors} == {t.name for t in bundled.tensors}  # tied output layer left out


def test_non_llama_models_are_refused_in_one_line(tmp_path, default_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(default_tokenizer))).save_pretrained(
        tmp_path / "gpt2"
    )
    default_tokenizer.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(SamiInputError, match=r"supports llama-family models \(llama, mistral\); this one is 'gpt2'"):
        write_gguf(tmp_path / "gpt2", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf*"))


def test_export_settings_refuse_other_gguf_types(default_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", str(default_run), str(tmp_path / "x"), "--gguf", "q4_0"])
    assert "invalid choice: 'q4_0'" in capsys.readouterr().err
    assert yaml.safe_load((default_run / "config.yaml").read_text())["model"]["policy"] == "default"
