"""The evaluated model generates through `evaluation.generation` (`sami.evaluation.engine`): a fake engine is
closed on success and on error and gets the evaluation's greedy calls; the real llama.cpp server answers an
evaluation with the same greedy requests as a direct call; in a run, `evaluation.generation: run` goes through the
run's server, which must serve the trained checkpoint or the evaluation stops before writing a response."""

from __future__ import annotations

import http.server
import json
import re
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import ROOT, free_port, loopback_server, send_json
from fake_openai_server import REPLY, make_handler
from test_pipeline import tiny_config, write_config
from test_policy_server import check_port_free, server_on

import sami.generation.factory
from sami.cli import main
from sami.cli_settings import validate
from sami.constitutions import Constitution
from sami.data import load_queries
from sami.errors import SamiInputError
from sami.evaluation.context import EvaluationInputs
from sami.evaluation.evaluate import run_evaluation
from sami.evaluation.settings import EvaluationSettings
from sami.evaluation.templates import choose_template
from sami.generation import Completion, parse_generation
from sami.generation.factory import make_generator
from sami.io import read_jsonl
from sami.run_config import RunConfig
from sami.stage_parts import StageParts
from sami.stage_settings import evaluation_settings
from sami.stages import stage_table

STOP = choose_template("dialogue", "base", None).stop


class FakeEngine:
    """A generator that records its calls and `close()`, answering one fixed text (or failing on call `fail_at`)."""

    def __init__(self, fail_at: int | None = None):
        self.calls: list[dict] = []
        self.closed = 0
        self.fail_at = fail_at

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_p=1.0, stop=None, seed=None):
        self.calls.append(
            {"n": len(prompts), "max_new_tokens": max_new_tokens, "temperature": temperature, "stop": stop}
        )
        if self.fail_at is not None and len(self.calls) > self.fail_at:
            raise RuntimeError("engine died")
        return [Completion(" Sure.", 2, "stop", ended_with_eos=True) for _ in prompts]

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def fake_engine(monkeypatch):
    """`make_generator` patched: a vllm settings gets a `FakeEngine` (recorded with its settings)."""
    made: list[tuple] = []

    def make(settings=None, **kwargs):
        engine = FakeEngine(fail_at=made_fail_at[0])
        made.append((settings, kwargs, engine))
        return engine

    made_fail_at: list[int | None] = [None]
    monkeypatch.setattr(sami.generation.factory, "make_generator", make)
    return made, made_fail_at


def evaluate(tmp_path, model, tokenizer, **settings):
    queries = load_queries("hh_harmless_test")[:2]
    ev_settings = EvaluationSettings(constitutions="hh_opus", max_new_tokens=3, device="cpu", **settings)
    inputs = EvaluationInputs(queries=queries, model=model, tokenizer=tokenizer, judge=False)
    run_evaluation(ev_settings, "evaluated-model", tmp_path, inputs, steps=("responses",))


def test_a_vllm_engine_is_built_on_the_evaluated_model_and_closed(
    tmp_path, fake_engine, tiny_model, default_tokenizer
):
    made, _ = fake_engine
    generation = {"backend": "vllm", "tensor_parallel_size": 2}
    evaluate(tmp_path, tiny_model, default_tokenizer, generation=generation, dtype="bfloat16")
    ((settings, kwargs, engine),) = made
    assert settings.backend == "vllm" and settings.tensor_parallel_size == 2 and kwargs == {}
    assert settings.model == "evaluated-model" and settings.dtype == "bfloat16"  # the evaluation's model and dtype
    assert engine.closed == 1
    # the evaluation's calls: greedy, its budget and the template's stop strings
    assert engine.calls and all(
        c == {**c, "max_new_tokens": 3, "temperature": 0.0, "stop": STOP} for c in engine.calls
    )
    model_side = [r for r in read_jsonl(tmp_path / "responses.jsonl") if r["side"] == "model"]
    assert len(model_side) == 2 and {r["response"] for r in model_side} == {"Sure."}
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert len(scores["intrinsic"]) == 2  # scored with the hf model after the engine closed


def test_the_engine_is_closed_when_generation_fails(tmp_path, fake_engine, tiny_model, default_tokenizer):
    made, fail_at = fake_engine
    fail_at[0] = 1  # the second call raises
    with pytest.raises(RuntimeError, match="engine died"):
        evaluate(tmp_path, tiny_model, default_tokenizer, generation={"backend": "vllm"})
    ((_, _, engine),) = made
    assert engine.closed == 1 and len(engine.calls) == 2
    assert not (tmp_path / "scores.json").exists()


def test_default_is_hf_on_the_loaded_model(tmp_path, fake_engine, tiny_model, default_tokenizer):
    made, _ = fake_engine
    evaluate(tmp_path, tiny_model, default_tokenizer, batch_size=3)
    ((settings, kwargs, engine),) = made
    assert settings.backend == "hf" and settings.batch_size == 3  # evaluation.batch_size, as before
    assert kwargs == {"model": tiny_model, "tokenizer": default_tokenizer} and engine.closed == 1


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ("same", "eval.yaml: generation: expected 'run' or the settings of a generation backend"),
        ({"backend": "vllm", "batch_size": 3}, "eval.yaml: generation.batch_size: a setting of backend hf only"),
        ({"backend": "nope"}, "eval.yaml: generation: expected 'run' or the settings of a generation backend"),
    ],
)
def test_bad_engine_settings_are_one_line(given, error):
    with pytest.raises(SamiInputError, match=re.escape(error)):
        validate(EvaluationSettings, {"generation": given}, source="eval.yaml")
    assert validate(EvaluationSettings, {"generation": {"tensor_parallel_size": 2, "backend": "vllm"}}).generation


def test_run_outside_a_run_is_refused(tmp_path, tiny_model, default_tokenizer):
    with pytest.raises(SamiInputError, match="evaluation.generation: 'run' means the run's generation section"):
        evaluate(tmp_path, tiny_model, default_tokenizer, generation="run")


def test_run_resolves_to_the_runs_generation_and_moves_only_the_responses_keys(tiny_model_dir):
    base = tiny_config(tiny_model_dir, generation={"backend": "vllm", "tensor_parallel_size": 4})
    plain = RunConfig.model_validate(base)
    assert evaluation_settings(plain).generation is None
    same = RunConfig.model_validate({**base, "evaluation": {**base["evaluation"], "generation": "run"}})
    assert evaluation_settings(same).generation == same.generation
    own = {"backend": "vllm", "tensor_parallel_size": 4, "max_new_tokens": 9}
    inline = RunConfig.model_validate({**base, "evaluation": {**base["evaluation"], "generation": own}})
    p_plain, p_same, p_inline = (StageParts.of(c, contents=False) for c in (plain, same, inline))
    assert "generation" not in p_plain.responses(1)["evaluation"]  # the default is out of the hash
    assert p_same.responses(1) != p_plain.responses(1) and p_same.samples(1) == p_plain.samples(1)
    assert p_same.judgments() == p_plain.judgments()
    engine = p_inline.responses(1)["evaluation"]["generation"]
    assert engine["tensor_parallel_size"] == 4 and "max_new_tokens" not in engine  # a field evaluation never reads


# ---- a real server -------------------------------------------------------------------------------
@contextmanager
def recording_proxy(upstream: str) -> Iterator[tuple[str, list[dict]]]:
    """A loopback proxy to `upstream` that records the JSON body of every POST."""
    origin = upstream.rsplit("/v1", 1)[0]
    bodies: list[dict] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _handle(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if body:
                with lock:
                    bodies.append(json.loads(body))
            req = urllib.request.Request(origin + self.path, data=body or None, method=self.command)
            req.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(req, timeout=120) as resp:
                send_json(self, resp.status, resp.read())

        do_GET = do_POST = _handle

    with loopback_server(Handler) as url:
        yield url, bodies


@pytest.mark.slow
def test_evaluation_through_the_real_llama_cpp_server(tmp_path, llama_server):
    queries = load_queries("hh_helpful_test")[:2]
    with recording_proxy(llama_server) as (url, bodies):
        settings = EvaluationSettings(
            constitutions="hh_opus", max_new_tokens=12, device="cpu", intrinsic=False, adherence=False,
            generation={"backend": "openai", "base_url": url, "max_concurrency": 2},
        )  # fmt: skip
        inputs = EvaluationInputs(queries=queries, judge=False)
        run_evaluation(settings, "default", tmp_path, inputs, steps=("responses",))
    records = {r["query_id"]: r for r in read_jsonl(tmp_path / "responses.jsonl")}
    assert sorted(records) == sorted(q.id for q in queries)
    assert len(bodies) == 2 and all(
        b["temperature"] == 0.0 and b["max_tokens"] == 12 and b["stop"] == STOP and b["model"] == "smollm2"
        for b in bodies
    )  # greedy, the evaluation's budget and stop strings, the served model
    # the same greedy request made directly gives the same responses (the server-backed generation tests' settings)
    template = choose_template("dialogue", "base", None)
    direct = make_generator(parse_generation(backend="openai", base_url=llama_server, max_concurrency=1))
    for q in queries:
        r = records[q.id]
        prompt = template.generation_prompt(Constitution.from_dict(r["constitution"]), q)
        (c,) = direct.generate([prompt], max_new_tokens=12, temperature=0.0, stop=STOP)
        assert r["response"] == template.postprocess(c.text) and r["response"].strip()
        assert r["num_tokens"] == c.num_tokens and 0 < r["num_tokens"] <= 12
        assert r["ended_with_eos"] == c.ended_with_eos and not any(s in r["response"] for s in STOP)
    direct.close()


# ---- in a run: the run's server serves the evaluated checkpoint, or the stage stops -----------------------------
def served_run_config(model_dir, **generation) -> dict:
    config = tiny_config(model_dir, generation={"backend": "openai", "max_concurrency": 2, **generation})
    config["iterations"] = {"count": 1, "steps": [1]}
    config["evaluation"] = {**config["evaluation"], "baselines": {}, "generation": "run"}
    return config


def test_a_server_without_the_checkpoint_stops_the_evaluation_before_responses(tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "run"
    policy = run / "iter-1" / "train"
    port = free_port()
    wrong: list[str] = []
    with server_on(port, make_handler([{"id": "base-model"}], wrong)) as url:
        cfg = write_config(tmp_path / "cfg.yaml", served_run_config(tiny_model_dir, base_url=url))
        assert main(["run", str(cfg), "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "evaluation of iter-1" in err and str(policy.resolve()) in err and "'base-model'" in err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "evaluation of iter-1" in last and "rerun the same command to resume" in last
    iter0 = [r for r in read_jsonl(run / "iter-0" / "eval" / "responses.jsonl") if r["side"] == "model"]
    assert iter0 and {r["response"] for r in iter0} == {REPLY.strip()}  # π₀ was evaluated through the server
    assert not (run / "iter-1" / "eval" / "responses.jsonl").exists()  # nothing generated with the wrong model
    n_before = len(wrong)

    right: list[str] = []
    served = [{"id": "base-model"}, {"id": "pi1", "root": str(policy)}]
    with server_on(port, make_handler(served, right)) as url:
        cfg = write_config(tmp_path / "cfg.yaml", served_run_config(tiny_model_dir, base_url=url))
        assert main(["run", str(cfg), "--output-dir", str(run)]) == 0
    assert len(wrong) == n_before and right and set(right) == {"pi1"}  # iter-1's evaluation alone, with the checkpoint
    assert (run / "iter-1" / "eval" / "metrics.json").exists()


def test_the_run_starts_a_server_on_the_evaluated_checkpoint(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    record = tmp_path / "server.jsonl"
    port = free_port()
    script = ROOT / "tests" / "fake_openai_server.py"
    server = f"{sys.executable} {script} --model {{model}} --port {{port}} --record {record}"
    cfg = write_config(tmp_path / "cfg.yaml", served_run_config(tiny_model_dir, server=server, server_port=port))
    assert main(["run", str(cfg), "--output-dir", str(run)]) == 0
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    started = sorted(x["started"] for x in lines if "started" in x)
    checkpoint = str(run / "iter-1" / "train")
    assert started == sorted(
        [str(tiny_model_dir), str(tiny_model_dir), checkpoint]
    )  # iter-0 eval, samples, iter-1 eval
    assert (run / "iter-1" / "eval" / "server.log").exists() and check_port_free(port)


@pytest.mark.parametrize(
    ("engine", "where"),
    [(None, "accelerate"), ({"backend": "hf", "batch_size": 4}, "accelerate"), ({"backend": "vllm"}, "process"),
     ("run", "process")],
)  # fmt: skip
def test_only_hf_evaluation_is_split_over_an_accelerate_launch(tiny_model_dir, engine, where):
    """Under `launcher.kind: accelerate` the responses stage runs on every process with hf (data parallel); a
    vLLM engine or a server parallelises on its own, in one process."""
    base = tiny_config(tiny_model_dir, generation={"backend": "vllm"}, launcher={"kind": "accelerate"})
    evaluation = {**base["evaluation"], **({"generation": engine} if engine is not None else {})}
    table = stage_table(RunConfig.model_validate({**base, "evaluation": evaluation}), contents=False)
    assert {table[n].where for n in table if n.endswith("/responses")} == {where}
