"""The evaluation's settings: `EvaluationSettings` (how a model is evaluated) and `BaselineSettings` (a model it
is compared against). `sami.run_config` embeds `EvaluationSettings` in a run's config; `sami.stage_settings` fills a
run's open fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from sami.data import QuerySource
from sami.evaluation.judge_settings import JudgeSettings, LocalJudgeSettings
from sami.generation import GenerationSettings
from sami.generation.base import BACKENDS
from sami.tokens import resolve_eos

TASKS = ("dialogue", "summarization")


def _engine_tag(value: Any) -> str | None:  # named `backend` below: pydantic names it in errors
    if isinstance(value, str):
        return value if value == "run" else None
    tag = (value.get("backend") or "hf") if isinstance(value, dict) else getattr(value, "backend", None)
    return tag if tag in BACKENDS else None


_engine_tag.__name__ = "backend"
# `evaluation.generation`: 'run' or the settings of one backend, one union so that an error names the field as
# `generation.batch_size` (the backend tags are stripped from error locations) or says what is expected
EvaluationGeneration = Annotated[
    Union[  # noqa: UP007 - Annotated members
        tuple(Annotated[member, Tag(name)] for name, member in BACKENDS.items())
        + (Annotated[Literal["run"], Tag("run")],)
    ],
    Discriminator(
        _engine_tag,
        custom_error_type="engine_choice",
        custom_error_message="expected 'run' or the settings of a generation backend (backend: hf, vllm or openai)",
    ),
]


class BaselineSettings(BaseModel):
    """A model the evaluated model is compared against."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description="model reference ('default', a folder, a GGUF file, a cached hub id)")
    style: Literal["base", "chat"] | None = Field(
        None, description="prompt style for this model (None: the evaluation's); 'chat' for an instruct model"
    )
    generation: GenerationSettings | None = Field(
        None, description="how this baseline generates (None: hf in this process with the evaluation's settings)"
    )


class EvaluationSettings(BaseModel):
    """How a model is evaluated. In a run, queries and constitutions come from the run config (`data.eval`,
    `constitutions`); `queries`/`constitutions` here are for the standalone `sami evaluate`."""

    model_config = ConfigDict(extra="forbid")

    queries: QuerySource | str | None = Field(
        None, description="evaluation queries (a bundled name, a path or a query source); a run uses data.eval"
    )
    limit: int | None = Field(None, ge=1, description="evaluate only the first `limit` queries")
    constitutions: str | None = Field(
        None, description="constitution file or bundled name; a run uses its own constitutions"
    )
    scheme: str | None = Field(
        None, description="how the C constitutions of a query are drawn (None: sampling.scheme in a run, else uniform)"
    )
    n_constitutions: int | None = Field(
        None, ge=2, description="C for the intrinsic metrics (None: sampling.n_constitutions in a run, else 2)"
    )
    mode: Literal["train", "eval", "heldout"] = Field(
        "train", description="principle pool: train (in-distribution), eval (all), heldout (held-out principles)"
    )
    task: Literal["dialogue", "summarization"] | None = Field(
        None, description="prompt and judge wording (None: the constitution set's task)"
    )
    style: Literal["base", "chat"] = Field("base", description="prompt style of the evaluated model")
    baselines: dict[str, str | BaselineSettings] = Field(
        default_factory=dict,
        description="baselines by name -> model reference or settings; a run always adds 'base' (the base model) "
        "from iteration 1",
    )
    judge: JudgeSettings = Field(default_factory=LocalJudgeSettings, description="the pairwise judge")
    max_new_tokens: int = Field(350, ge=1, description="response budget (greedy decoding; the paper: 350)")
    generation: EvaluationGeneration | None = Field(
        None,
        description="how the evaluated model generates: None: hf in this process (evaluation.batch_size, dtype); "
        "'run': the run's `generation` section (vllm, a server, hf); or settings of its own (backend: vllm, ...). "
        "The evaluated model replaces `model`; decoding stays greedy with the evaluation's budget and stop strings",
    )
    batch_size: int = Field(8, ge=1, description="hf generation: prompts per batch; also queries per MI forward")
    chunk_size: int = Field(8, ge=1, description="queries generated or judged between two writes to disk")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = Field(
        None, description="weights dtype of the evaluated and baseline models (None: float32)"
    )
    device: str | None = Field(None, description="torch device (None: cuda when available, else cpu)")
    device_map: str | None = Field(
        None,
        description="the evaluated model spread over this process's devices: transformers' device_map ('auto', "
        "'balanced', 'sequential'), for a model that does not fit one device (one process; None: on `device`)",
    )
    intrinsic: bool = Field(True, description="compute the intrinsic metrics (MI, InfoNCE bound, lengths)")
    mi: Literal["sign_patterns", "training_pairs"] = Field(
        "sign_patterns",
        description="MI over every sign pattern of the positive constitution's principles (2^k constitutions, the "
        "paper's) or over the C constitutions drawn as for training (scheme, n_constitutions)",
    )
    baseline_intrinsic: bool = Field(
        True, description="baselines generated in this process (hf) get MI and lengths too (metrics 'baselines')"
    )
    mi_max_patterns: int = Field(
        16, ge=2, description="sign_patterns: above this many, the positive plus a seeded sample (mi_sampled)"
    )
    eos: Literal["generated", "always", "never"] | None = Field(
        None,
        description="intrinsic metrics: score EOS where the model ended (generated), always or never (None: never "
        "for sign_patterns, the paper's response tokens only; generated for training_pairs)",
    )
    include_eos: bool | None = Field(None, description="older spelling of eos: true = always, false = never")
    adherence: bool = Field(
        True,
        description="when principles carry checks: responses under each query's antithesis constitution too, and "
        "adherence under both (sami.evaluation.adherence)",
    )
    contrast: bool = Field(
        True, description="in a run: the contrast check at iteration 0 (flip each principle alone; warn when weak)"
    )
    contrast_limit: int | None = Field(
        None, ge=2, description="contrast check: use only the first `contrast_limit` queries (None: all)"
    )
    seed: int = Field(0, description="seed of the per-query constitutions")
    benchmarks: list[Literal["ifeval"]] = Field(
        default_factory=list, description="in a run: judge-free benchmarks of every evaluated iteration (ifeval)"
    )
    ifeval_limit: int | None = Field(
        100, ge=1, description="benchmarks ifeval: the first N of IFEval's 541 prompts (None: all)"
    )
    ifeval_max_new_tokens: int = Field(
        1280, ge=1, description="benchmarks ifeval: token budget per response (lm-evaluation-harness: 1280)"
    )
    rejudge: bool = Field(
        False, description="judge again where a judgments file was written by another judge (the old file is kept)"
    )


def as_baseline(spec: str | BaselineSettings) -> BaselineSettings:
    """A baseline given as a model reference or as settings, as settings."""
    return spec if isinstance(spec, BaselineSettings) else BaselineSettings(model=str(spec))


def eos_policy(settings: EvaluationSettings) -> str:
    """The EOS policy of the intrinsic metrics: `eos`, the older `include_eos`, else the MI kind's default."""
    if settings.eos is None and settings.include_eos is None:
        return "never" if settings.mi == "sign_patterns" else "generated"
    return resolve_eos(settings.eos if settings.include_eos is None else None, settings.include_eos)
