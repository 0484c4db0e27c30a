"""The generator of the evaluated model's responses (`evaluation.generation`): opened for the generation part of
the responses step, in the stage's own process, and closed after it (also on error), before the MI scoring loads
the model for its forward passes.

- None (the default): hf in this process on the evaluated model the scoring reuses, with `evaluation.batch_size`
  and `evaluation.dtype` (the behaviour of before).
- hf settings: the same loaded model, batched as those settings say.
- vllm: vLLM's engine on the evaluated model (tensor parallel as the settings say), shut down when generation ends.
- openai: as self-generation (`sami.generation.server.policy_endpoint`): `server` starts a server on the evaluated
  model for the stage; without it, a model other than the run's π₀ (`Evaluation.base_model`) must be listed by the
  server's /v1/models, or the stage stops with one line before a response is written.
- 'run' is resolved to the run's `generation` by `sami.stage_settings.evaluation_settings`; outside a run it is
  refused.

The evaluation's calls are the same whatever the backend: greedy (temperature 0), `evaluation.max_new_tokens` and
the template's stop strings (`sami.evaluation.responses`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sami.errors import SamiInputError
from sami.evaluation.context import Evaluation
from sami.generation import HFGeneration, TextGenerator, factory  # factory.make_generator: tests patch it
from sami.generation.base import closing
from sami.generation.server import policy_endpoint


@contextmanager
def evaluated_generator(ev: Evaluation, default: HFGeneration) -> Iterator[TextGenerator]:
    """The generator of `ev`'s model as `ev.settings.generation` says (`default`: the hf settings of None)."""
    settings = ev.settings.generation
    if settings == "run":
        raise SamiInputError(
            "evaluation.generation: 'run' means the run's generation section, and this evaluation is not part of a "
            "run; give the settings themselves (e.g. {backend: vllm, tensor_parallel_size: 8})"
        )
    if settings is None or settings.backend == "hf":
        generator = factory.make_generator(settings or default, model=ev.get_model(), tokenizer=ev.get_tokenizer())
    elif settings.backend == "vllm":
        local = settings.model_copy(
            update={
                "model": ev.model_ref,
                "dtype": settings.dtype or ev.settings.dtype,
                "trust_remote_code": settings.trust_remote_code or ev.trust_remote_code,
            }
        )
        generator = factory.make_generator(local)
    else:
        base = ev.base_model if ev.base_model is not None else ev.model_ref
        log_path = ev.files.root / "server.log"
        what = f"evaluation of {ev.label} (evaluation.generation)"
        with policy_endpoint(settings, ev.model_ref, base_policy=base, what=what, log_path=log_path) as endpoint:
            with closing(factory.make_generator(endpoint)) as generator:
                yield generator
        return
    with closing(generator):  # the vLLM engine is shut down before the scoring loads the model, also on error
        yield generator
