"""The hf generation backend on the real default model: batching, stop strings, seeds, finish reasons."""

from __future__ import annotations

import json

import pytest

from sami.data import bundled_queries_path
from sami.errors import SamiInputError
from sami.generation import Completion, OpenAIGeneration, TextGenerator, parse_generation
from sami.generation.factory import make_generator
from sami.generation.hf import HFGenerator


def _queries(n: int) -> list[str]:
    with bundled_queries_path("hh_helpful_test").open() as f:
        return [json.loads(line)["query"] for line, _ in zip(f, range(n), strict=False)]


@pytest.fixture(scope="module")
def prompts() -> list:
    """Real queries of very different lengths, as plain-text prompts and as chat messages."""
    qs = _queries(7)
    text = [f"Human: {q}\n\nAssistant:" for q in qs[:5]]
    text.append("Human: " + " ".join(qs) + "\n\nAssistant:")  # a long one: heavy left padding for the others
    chat = [[{"role": "user", "content": q}] for q in qs[5:7]]
    return text + chat


@pytest.fixture(scope="module")
def gen(default_model, default_tokenizer) -> HFGenerator:
    return HFGenerator(default_model, default_tokenizer, batch_size=8)


@pytest.mark.slow
def test_greedy_batched_equals_one_by_one(gen, prompts, default_model, default_tokenizer):
    batched = gen.generate(prompts, max_new_tokens=20)
    single = [gen.generate([p], max_new_tokens=20)[0] for p in prompts]
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.num_tokens for c in batched] == [c.num_tokens for c in single]
    assert all(c.text.strip() for c in batched)
    # and the loop agrees with transformers' own greedy `generate` on an unpadded prompt
    enc = default_tokenizer(prompts[0], return_tensors="pt")
    ref = default_model.generate(**enc, max_new_tokens=20, do_sample=False)
    assert default_tokenizer.decode(ref[0, enc.input_ids.shape[1] :], skip_special_tokens=True) == single[0].text


@pytest.mark.slow
def test_prefill_in_parts_equals_one_prefill(gen, prompts, default_model, default_tokenizer):
    whole = HFGenerator(default_model, default_tokenizer, batch_size=8, prefill_batch_size=8)
    parts = HFGenerator(default_model, default_tokenizer, batch_size=8, prefill_batch_size=3)  # 3 + 3 + 2 rows
    a = whole.generate(prompts, max_new_tokens=12)
    b = parts.generate(prompts, max_new_tokens=12)
    assert [c.text for c in a] == [c.text for c in b]
    assert [c.finish_reason for c in a] == [c.finish_reason for c in b]
    assert gen.prefill_batch_size == 8  # the CPU default
    with pytest.raises(SamiInputError, match="prefill_batch_size"):
        HFGenerator(default_model, default_tokenizer, prefill_batch_size=0)


@pytest.mark.slow
def test_shared_prompt_prefix_gives_the_same_output(default_model, default_tokenizer):
    import random

    from sami.constitutions import load_constitutions, sample_constitutions
    from sami.prompts import get_template

    template, cset = get_template("dialogue", "base"), load_constitutions("hh_opus")
    pair = sample_constitutions(cset, "uniform", 2, random.Random(0))
    sami_prompts = [template.generation_prompt(c, q) for q in _queries(3) for c in pair]
    shared = HFGenerator(default_model, default_tokenizer, batch_size=6, prefill_batch_size=4)
    plain = HFGenerator(default_model, default_tokenizer, batch_size=6, share_prefix=False)
    ids = [shared.encode(p) for p in sami_prompts]
    assert shared._shared_prefix(ids) >= 50  # the template's instructions and format example
    assert plain._shared_prefix(ids) == 0
    a = shared.generate(sami_prompts, max_new_tokens=12, stop=template.stop)
    b = plain.generate(sami_prompts, max_new_tokens=12, stop=template.stop)
    assert [c.text for c in a] == [c.text for c in b]
    assert [c.num_tokens for c in a] == [c.num_tokens for c in b]


@pytest.mark.slow
def test_stop_string_cuts_and_ends_the_sequence(gen, prompts):
    full = gen.generate(prompts[:1], max_new_tokens=24)[0]
    assert full.finish_reason == "length" and full.num_tokens == 24
    words = full.text.split()
    assert len(words) >= 6, full.text
    stop = " " + words[3]  # a string the model really produces, a few tokens in
    cut = gen.generate(prompts[:1], max_new_tokens=24, stop=[stop, "never-produced-marker"])[0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop" and cut.ended_with_eos is False  # a stop string, not EOS (issue 15)
    assert full.ended_with_eos is False
    assert cut.num_tokens < full.num_tokens  # it stopped generating, not just cut the text


@pytest.mark.slow
def test_eos_is_stop_and_budget_is_length(gen):
    chat = [[{"role": "user", "content": "What is the capital of France?"}]]
    done = gen.generate(chat, max_new_tokens=24)[0]
    assert done.finish_reason == "stop" and 0 < done.num_tokens < 24
    assert done.ended_with_eos is True and len(done.token_ids) == done.num_tokens  # EOS itself is not in the ids
    short = gen.generate(chat, max_new_tokens=1)[0]
    assert short.finish_reason == "length" and short.num_tokens == 1 and short.ended_with_eos is False
    forced = gen.generate(chat, max_new_tokens=done.num_tokens + 6, min_new_tokens=done.num_tokens + 6)[0]
    assert forced.num_tokens == done.num_tokens + 6 and forced.finish_reason == "length"


@pytest.mark.slow
def test_sampling_is_reproducible_from_a_seed(gen, prompts, default_model, default_tokenizer):
    some = prompts[:3]
    kwargs = dict(max_new_tokens=16, temperature=1.0, top_p=0.95)
    a = gen.generate(some, seed=1, **kwargs)
    b = gen.generate(some, seed=1, **kwargs)
    c = gen.generate(some, seed=2, **kwargs)
    greedy = gen.generate(some, max_new_tokens=16)
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]
    assert [x.text for x in a] != [x.text for x in greedy]
    # each prompt has its own generator: the draw does not depend on batch size or order
    one_by_one = HFGenerator(default_model, default_tokenizer, batch_size=1)
    assert [x.text for x in one_by_one.generate(some[::-1], seed=1, **kwargs)] == [x.text for x in a][::-1]


@pytest.mark.slow
def test_make_generator_with_a_loaded_model(default_model, default_tokenizer):
    gen = make_generator(parse_generation(batch_size=2), model=default_model, tokenizer=default_tokenizer)
    assert isinstance(gen, TextGenerator) and gen.model is default_model
    out = gen.generate(["Human: Hi!\n\nAssistant:"], max_new_tokens=3)
    assert isinstance(out[0], Completion) and out[0].num_tokens == 3
    assert gen.generate([], max_new_tokens=3) == []
    with pytest.raises(SamiInputError, match="tokenizer"):
        make_generator(parse_generation(), model=default_model)


@pytest.mark.slow
def test_bad_requests_fail_clearly(gen):
    with pytest.raises(SamiInputError, match="max_new_tokens"):
        gen.generate(["x"], max_new_tokens=0)
    with pytest.raises(SamiInputError, match=r"prompts\[1\]"):
        gen.generate(["x", 3], max_new_tokens=2)  # type: ignore[list-item]
    with pytest.raises(SamiInputError, match="empty prompt"):
        gen.generate([""], max_new_tokens=2)


def test_settings_reject_unknown_fields():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        parse_generation(backend="hf", batchsize=4)
    assert parse_generation().backend == "hf"
    assert "description" in OpenAIGeneration.model_json_schema()["properties"]["api_key_env"]


# ---- vllm backend: vLLM cannot be installed here; test the missing-import message and the settings mapping.


def test_vllm_missing_says_how_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SamiInputError, match=r"pip install 'sami\[vllm\]'"):
        make_generator(parse_generation(backend="vllm", model=str(tmp_path)))


class _FakeVLLM:
    """Stands in for the `vllm` module: records what the backend passes to LLM and SamplingParams."""

    def __init__(self):
        import types

        self.module = types.ModuleType("vllm")
        self.llm_kwargs: dict = {}
        self.calls: list[tuple[str, list, list]] = []
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs):
                fake.llm_kwargs = kwargs

            def _answer(self, kind, prompts, params):
                fake.calls.append((kind, prompts, params))
                out = []
                for p, sp in zip(prompts, params, strict=True):
                    text = f"{kind}:{p if isinstance(p, str) else p[-1]['content']} STOP tail"
                    reason = "length" if sp.kwargs["max_tokens"] < 3 else "stop"
                    sample = types.SimpleNamespace(text=text, token_ids=[1, 2, 3], finish_reason=reason)
                    out.append(types.SimpleNamespace(outputs=[sample]))
                return out

            def generate(self, prompts, sampling_params, use_tqdm=True):
                return self._answer("generate", prompts, sampling_params)

            def chat(self, messages, sampling_params, use_tqdm=True):
                return self._answer("chat", messages, sampling_params)

        self.module.LLM, self.module.SamplingParams = LLM, SamplingParams


def test_vllm_maps_settings_to_its_api(monkeypatch, tmp_path):
    import sys

    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    (tmp_path / "config.json").write_text("{}")
    settings = parse_generation(
        backend="vllm",
        model=str(tmp_path),
        dtype="bfloat16",
        tensor_parallel_size=4,
        gpu_memory_utilization=0.5,
        max_model_len=2048,
        seed=7,
        engine_kwargs={"enforce_eager": True},
    )
    gen = make_generator(settings)
    assert fake.llm_kwargs == {
        "model": str(tmp_path),
        "tensor_parallel_size": 4,
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.5,
        "seed": 7,
        "trust_remote_code": False,
        "max_model_len": 2048,
        "enable_prefix_caching": True,  # on unless engine_kwargs turn it off
        "enforce_eager": True,
    }
    prompts = ["a", [{"role": "user", "content": "b"}], "c"]
    out = gen.generate(prompts, max_new_tokens=5, stop=["STOP"])
    assert [c.text for c in out] == ["generate:a ", "chat:b ", "generate:c "]  # order kept, cut at the stop
    assert [c.finish_reason for c in out] == ["stop"] * 3 and out[0].num_tokens == 3
    (kind, sent, params) = fake.calls[0]
    assert kind == "generate" and sent == ["a", "c"]
    assert params[0].kwargs == {
        "n": 1,
        "max_tokens": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": ["STOP"],
        "seed": None,
    }
    gen.generate(["x", "x"], max_new_tokens=2, temperature=0.8, top_p=0.9, seed=3)
    sampled = [p.kwargs for p in fake.calls[-1][2]]
    assert sampled[0]["temperature"] == 0.8 and sampled[0]["top_p"] == 0.9 and sampled[0]["stop"] is None
    assert sampled[0]["seed"] is not None and sampled[0]["seed"] != sampled[1]["seed"]  # one seed per prompt
    assert gen.generate(["x"], max_new_tokens=2)[0].finish_reason == "length"


def test_vllm_prefix_caching_can_be_turned_off(monkeypatch, tmp_path):
    import sys

    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    (tmp_path / "config.json").write_text("{}")
    make_generator(parse_generation(backend="vllm", model=str(tmp_path)))
    assert fake.llm_kwargs["enable_prefix_caching"] is True
    make_generator(parse_generation(backend="vllm", model=str(tmp_path), engine_kwargs={"enable_prefix_caching": 0}))
    assert fake.llm_kwargs["enable_prefix_caching"] == 0
