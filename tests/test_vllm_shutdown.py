"""No vLLM engine outlives its generation stage: `VLLMGenerator.close` shuts it down, and the run's samples stage
closes its generator on success and on error (a fake `vllm` module stands in for the GPU engine)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from test_pipeline import tiny_config

import sami.generation.vllm_backend as vllm_backend
from sami.generation.vllm_backend import VLLMGenerator
from sami.pipeline import Pipeline
from sami.run_config import parse_config


class FakeLLM:
    """`vllm.LLM` as the backend uses it; records what happens to it."""

    instances: list[FakeLLM] = []

    def __init__(self, model: str, fail: bool = False, **kwargs):
        self.model, self.fail, self.shutdowns = model, fail, 0
        FakeLLM.instances.append(self)

    def generate(self, prompts, params, use_tqdm=False):
        if self.fail:
            raise RuntimeError("CUDA out of memory (fake)")
        sample = SimpleNamespace(text=" Fine.", token_ids=[1, 2], finish_reason="stop", stop_reason=None)
        return [SimpleNamespace(outputs=[sample]) for _ in prompts]

    chat = generate

    def shutdown(self):
        self.shutdowns += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.instances = []
    state = {"fail": False}
    module = SimpleNamespace(
        LLM=lambda **kw: FakeLLM(fail=state["fail"], **kw),
        SamplingParams=lambda **kw: SimpleNamespace(**kw),
    )
    monkeypatch.setattr(vllm_backend, "import_vllm", lambda: module)
    return state


def test_close_shuts_the_engine_down_once(fake_vllm, tiny_model_dir):
    gen = VLLMGenerator(str(tiny_model_dir))
    assert [c.text for c in gen.generate(["Hi"], max_new_tokens=4)] == [" Fine."]
    gen.close()
    gen.close()
    assert [e.shutdowns for e in FakeLLM.instances] == [1] and gen.llm is None
    with pytest.raises(RuntimeError, match="closed"):
        gen.generate(["Hi"], max_new_tokens=4)


def test_engine_core_shutdown_where_llm_has_no_shutdown(fake_vllm, tiny_model_dir, monkeypatch):
    calls = []
    gen = VLLMGenerator(str(tiny_model_dir))
    gen.llm = SimpleNamespace(
        llm_engine=SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: calls.append(1)))
    )
    gen.close()
    assert calls == [1]


@pytest.mark.parametrize("fail", [False, True], ids=["success", "error"])
def test_the_samples_stage_shuts_its_engine_down(fake_vllm, tmp_path, tiny_model_dir, fail):
    fake_vllm["fail"] = fail
    raw = tiny_config(tiny_model_dir, generation={"backend": "vllm"})
    pipeline = Pipeline(parse_config(yaml.safe_load(yaml.safe_dump(raw))), tmp_path / "run")
    pipeline.run_named("constitutions")
    if fail:
        with pytest.raises(RuntimeError, match="fake"):
            pipeline.run_named("iter-1/samples")
    else:
        pipeline.run_named("iter-1/samples")
        assert (tmp_path / "run" / "iter-1" / "samples.jsonl").is_file()
    assert len(FakeLLM.instances) == 1 and FakeLLM.instances[0].shutdowns == 1
