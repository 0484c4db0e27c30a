"""`sami benchmark ifeval`: generate IFEval responses (or read them), score them strictly and loosely, write
IFEval's files.

Generation follows IFEval's usual harnesses (lm-evaluation-harness `ifeval.yaml`: the prompt as one user turn
through the model's chat template, greedy decoding, `max_gen_toks: 1280`, no stop strings). Responses are
appended to `responses.jsonl` every `chunk_size` prompts, so an interrupted run resumes where it stopped; a rerun
with other generation settings into the same folder is refused. `--responses FILE` scores existing responses
(`{"prompt", "response"}` lines, IFEval's own input format), matched to IFEval's prompts by prompt text.
`--base-url URL` generates through an OpenAI-compatible server instead (vLLM, llama.cpp, a hosted API: its chat
endpoint, so the server applies the model's chat template), with `max_concurrency` requests in flight.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field
from rich.progress import Progress

from sami.endpoint import EndpointSettings
from sami.errors import SamiInputError
from sami.generation import HFGeneration, OpenAIGeneration, factory  # factory.make_generator: patched in tests
from sami.ifeval.evaluation import IFEvalInput, accuracies, load_inputs, score
from sami.io import JsonlStore, atomic_write_json, iter_jsonl, write_jsonl

DEFAULT_MAX_NEW_TOKENS = 1280  # lm-evaluation-harness ifeval.yaml `max_gen_toks`


class IFEvalSettings(EndpointSettings):
    """What `sami benchmark ifeval` scores, and how responses are generated (`base_url` and the other endpoint
    fields: through an OpenAI-compatible server's chat endpoint instead of loading `model`)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(
        None, description="generate through this OpenAI-compatible server's chat endpoint (None: load --model here)"
    )
    out: str = Field(..., description="output folder (responses.jsonl, eval_results_*.jsonl, results.json)")
    model: str | None = Field(None, description="model to generate with ('default', a folder or a GGUF file)")
    responses: str | None = Field(None, description="score this file of {prompt, response} lines instead")
    inputs: str | None = Field(None, description="IFEval input file (None: the bundled 541 prompts)")
    limit: int | None = Field(None, ge=1, description="only the first N prompts (None: all)")
    max_new_tokens: int = Field(
        DEFAULT_MAX_NEW_TOKENS, ge=1, description="token budget per response (lm-evaluation-harness: 1280)"
    )
    batch_size: int = Field(16, ge=1, description="prompts per generation batch")
    chunk_size: int = Field(32, ge=1, description="prompts generated between saves of responses.jsonl")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = Field(
        None, description="weights dtype for generation (None: float32)"
    )


def _from_file(path: str, inputs: list[IFEvalInput]) -> dict[str, str]:
    """key -> response for the IFEval prompts the file answers; errors name the file and line."""
    by_prompt = {inp.prompt: inp.key for inp in inputs}
    out: dict[str, str] = {}
    if not Path(path).is_file():
        raise SamiInputError(f"{path}: no such file")
    for line, record in iter_jsonl(path):
        prompt, response = record.get("prompt"), record.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise SamiInputError(f"{path}:{line}: expected string fields 'prompt' and 'response'")
        if prompt not in by_prompt:
            raise SamiInputError(f"{path}:{line}: prompt: not one of the IFEval prompts scored ({prompt[:60]!r})")
        out[by_prompt[prompt]] = response
    if not out:
        raise SamiInputError(f"{path}: no responses")
    return out


def _generation_info(settings: IFEvalSettings, generator: Any) -> dict[str, Any]:
    model = settings.model or "given model"
    if settings.base_url is not None:
        model = f"{settings.model_name or 'the first model served'} at {settings.base_url}"
    return {
        "model": model,
        "max_new_tokens": settings.max_new_tokens,
        "decoding": "greedy",
        "prompt": "one user turn through the model's chat template",
    }


def _generation(settings: IFEvalSettings) -> HFGeneration | OpenAIGeneration:
    """The backend settings: a server (`base_url`) or the model loaded here with transformers."""
    if settings.base_url is not None:
        return OpenAIGeneration(**{name: getattr(settings, name) for name in EndpointSettings.model_fields})
    return HFGeneration(model=settings.model or "default", dtype=settings.dtype, batch_size=settings.batch_size)


def generate_responses(
    settings: IFEvalSettings, inputs: list[IFEvalInput], generator: Any = None, *, progress: bool = True
) -> dict[str, str]:
    """Generate (resuming) the responses of `inputs` into `out/responses.jsonl`; key -> response."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    info = _generation_info(settings, generator)
    info_path = out / "generation.json"
    if info_path.exists():
        old = json.loads(info_path.read_text())
        if old != info:
            raise SamiInputError(
                f"{info_path}: responses there were generated with {old}, not {info}; use another --out"
            )
    atomic_write_json(info_path, info)
    store = JsonlStore(out / "responses.jsonl", key="key")
    todo = [inp for inp in inputs if inp.key not in store]
    made_here = bool(todo) and generator is None
    if made_here:
        generator = factory.make_generator(_generation(settings))
    bar = None
    if progress and todo:
        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("IFEval responses", total=len(todo))
    try:
        for start in range(0, len(todo), settings.chunk_size):
            chunk = todo[start : start + settings.chunk_size]
            prompts = [[{"role": "user", "content": inp.prompt}] for inp in chunk]
            completions = generator.generate(prompts, max_new_tokens=settings.max_new_tokens, temperature=0.0)
            for inp, c in zip(chunk, completions, strict=True):
                store.add({"key": inp.key, "prompt": inp.prompt, "response": c.text, "num_tokens": c.num_tokens,
                           "finish_reason": c.finish_reason})  # fmt: skip
            store.flush()
            if bar is not None:
                bar.advance(task, len(chunk))
    finally:
        if bar is not None:
            bar.stop()
        if made_here and hasattr(generator, "close"):  # a vLLM engine or HTTP connections: released here
            generator.close()
    store.flush()
    return {str(r["key"]): r["response"] for r in store.records}


def run_ifeval(settings: IFEvalSettings, generator: Any = None, *, progress: bool = True) -> dict[str, Any]:
    """Score IFEval (generating with `settings.model` or `generator`, or reading `settings.responses`); writes
    `eval_results_strict.jsonl`, `eval_results_loose.jsonl` and `results.json` under `settings.out` and returns
    the results."""
    sources = [settings.responses is not None, settings.model is not None or generator is not None,
               settings.base_url is not None]  # fmt: skip
    if sum(sources) != 1:
        raise SamiInputError("benchmark ifeval: give exactly one of --model, --base-url and --responses")
    inputs = load_inputs(settings.inputs)
    if settings.limit is not None:
        inputs = inputs[: settings.limit]
    started = time.perf_counter()
    if settings.responses is not None:
        responses = _from_file(settings.responses, inputs)
        inputs = [inp for inp in inputs if inp.key in responses]
    else:
        responses = generate_responses(settings, inputs, generator, progress=progress)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    strict = [score(inp, responses[inp.key], "strict") for inp in inputs]
    loose = [score(inp, responses[inp.key], "loose") for inp in inputs]
    write_jsonl(out / "eval_results_strict.jsonl", strict)
    write_jsonl(out / "eval_results_loose.jsonl", loose)
    results = accuracies(strict, loose)
    results["source"] = settings.responses or _generation_info(settings, generator)
    results["all_prompts"] = len(inputs) == len(load_inputs(settings.inputs))
    results["seconds_this_call"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "results.json", results)
    return results
