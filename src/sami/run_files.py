"""Typed run files: the pydantic models of `scores.json`, `metrics.json` (an evaluation folder) and
`report/summary.json` (a run's report), shared by the code that writes them and the report that reads them.

Every model accepts the files older runs wrote (later keys are optional); a file that does not fit is refused in
one line naming the file and the field (`read_run_file`, `SamiInputError`). Writing goes through `dump_run_file`,
which writes exactly the keys that were set (`exclude_unset`), so a file holds the same keys and values as the dict
it was built from. In metrics.json the blocks owned by other modules (win-rate summaries, `sami.evaluation.winrate`;
adherence, `sami.evaluation.adherence`; the contrast check; the judge identity) stay mappings, written as their
modules build them; the ones the report reads are checked against the models summary.json types them with
(`WinRate`, `Adherence`, `Contrast`), so the report's renderers read typed values and check none by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError
from pydantic_core import PydanticCustomError

from sami.cli_settings import describe_error, describe_validation_error
from sami.errors import SamiInputError
from sami.io import atomic_write_json

Block = dict[str, Any]


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


# A metric: a finite number or None (NaN and infinities read as None, as the report showed them before the models).
Number = Annotated[float | None, AfterValidator(_finite)]
M = TypeVar("M", bound=BaseModel)


class _File(BaseModel):
    """A run file's model: unknown keys (a newer writer's) are kept, not refused."""

    model_config = ConfigDict(extra="allow")


# ---- scores.json ------------------------------------------------------------------------------------------------


class QueryScores(_File):
    """The intrinsic scores of one query (`sami.evaluation.metrics.intrinsic_metrics(...)["per_query"]`)."""

    mi: float | None = Field(None, description="the paper's MI of the query's responses (None: an empty response)")
    mi_bound: float | None = Field(None, description="InfoNCE lower bound")
    sami_loss: float | None = Field(None, description="the SAMI loss of the mean log-prob matrix")
    accuracy: float | None = Field(None, description="share of responses whose own constitution scores highest")
    lengths: list[int] = Field(default_factory=list, description="response lengths in tokens, one per constitution")


class Scores(_File):
    """`scores.json`: the per-query intrinsic scores of an evaluation (`sami.evaluation.scores.ScoresFile`)."""

    eos: str | None = Field(None, description="the EOS policy the scores were computed with")
    mi: str = Field("training_pairs", description="the MI kind (absent in files written before sign patterns)")
    intrinsic: dict[str, QueryScores] = Field(default_factory=dict, description="query id -> the model's scores")
    contrast: dict[str, dict[str, float | None]] = Field(
        default_factory=dict, description="principle -> query id -> MI of the one-flipped pair"
    )
    baselines: dict[str, dict[str, QueryScores]] = Field(
        default_factory=dict, description="baseline name -> query id -> its scores"
    )
    baselines_skipped: dict[str, str] = Field(
        default_factory=dict, description="baseline name -> why its model did not load (no MI or lengths)"
    )


# ---- blocks of metrics.json and summary.json ------------------------------------------------------------


def _empty_block(value: Any) -> Any:
    return None if value == {} else value


def _interval(value: Any) -> Any:
    return None if value is None or None in value else value


# A 95% interval `[low, high]`; one with a missing end reads as None.
Interval = Annotated[tuple[Number, Number] | None, AfterValidator(_interval)]


class WinRate(_File):
    """A win-rate summary (`sami.evaluation.winrate.summarize`), pooled or of one subset."""

    win_rate: Number = None
    length_balanced_win_rate: Number = None
    length_controlled_win_rate: Number = None
    ci95: Interval = None
    n: int | None = None
    ties: int | None = None
    unparsed: int | None = None
    failed: int | None = None
    subsets: dict[str, WinRate] = Field(default_factory=dict, description="subset name -> its summary")


class AdherenceRate(_File):
    """Adherence of one scope (`sami.evaluation.adherence`): the fractions under + and −, their 95% Wilson
    intervals, and the change from iteration 0."""

    positive: Number = None
    positive_ci95: Interval = None
    antithesis: Number = None
    antithesis_ci95: Interval = None
    n: int | None = None
    change_positive: Number = None
    change_antithesis: Number = None


class Adherence(AdherenceRate):
    """An evaluation's adherence: all checkable principles, then per principle and per subset."""

    by_principle: dict[str, AdherenceRate] = Field(default_factory=dict)
    by_subset: dict[str, AdherenceRate] = Field(default_factory=dict)


class ContrastPrinciple(_File):
    """The contrast check of one principle (`sami.evaluation.contrast`)."""

    n: int | None = None
    mi: Number = None
    mi_sem: Number = None
    adherence_positive: Number = None
    adherence_flipped: Number = None
    weak: bool = False
    reasons: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class Contrast(_File):
    by_principle: dict[str, ContrastPrinciple] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)


BLOCK_ERROR = "run_file_block"


def _checked(model: type[BaseModel]) -> AfterValidator:
    """A metrics.json block kept as written (its dict) but checked against `model`, the shape summary.json types
    it with: a wrong field is refused when the file is read, naming the field inside the block."""

    def check(value: Any) -> Any:
        if value is not None:
            try:
                model.model_validate(value)
            except ValidationError as e:  # shown by `parse_run_file` as `<block's path>.<field>: what is wrong`
                raise PydanticCustomError(BLOCK_ERROR, "{line}", {"line": describe_error(e.errors()[0])}) from None
        return value

    return AfterValidator(check)


WinRateBlock = Annotated[Block, _checked(WinRate)]
AdherenceDict = Annotated[Block | None, _checked(Adherence)]
ContrastDict = Annotated[Block | None, _checked(Contrast)]


# ---- metrics.json -----------------------------------------------------------------------------------------------


class SignLengths(BaseModel):
    positive: Number = None
    negative: Number = None


class Lengths(BaseModel):
    """A `mean_length` / `mean_length_tokens` block (`sami.evaluation.metrics.length_stats`); other keys are
    dropped."""

    positive: Number = Field(None, description="mean over the all-positive constitution's responses")
    negative: Number = Field(None, description="mean over the other constitutions' responses")
    by_constitution: dict[str, Number] = Field(default_factory=dict, description="constitution label -> mean")
    by_principle: dict[str, SignLengths] = Field(default_factory=dict, description="principle -> mean by sign")


def _empty_is_none(value: Any) -> Any:
    return None if value == {} else value


def _none_is_empty(value: Lengths | None) -> Block:
    return value.model_dump(exclude_unset=True) if value is not None else {}


# A `mean_length` / `mean_length_tokens` field: `{}` (nothing measured) reads as None and is written back as `{}`.
LengthsBlock = Annotated[Lengths | None, BeforeValidator(_empty_is_none), PlainSerializer(_none_is_empty)]


class SubsetMetrics(_File):
    """One entry of metrics.json's `subsets` (a query subset, e.g. "helpful")."""

    n_queries: int | None = None
    mi: Number = None
    mi_sem: Number = None
    mi_bound: Number = None
    mean_length: LengthsBlock = None
    mean_length_tokens: LengthsBlock = None
    win_rates: dict[str, WinRateBlock] = Field(default_factory=dict, description="baseline -> win-rate summary")
    adherence: AdherenceDict = None


class BaselineMetrics(_File):
    """A baseline's MI and lengths under the MI constitutions (metrics.json's `baselines`)."""

    mi: Number = None
    mi_sem: Number = None
    mean_length: LengthsBlock = None
    mean_length_tokens: LengthsBlock = None


class Metrics(_File):
    """`metrics.json` of an evaluation folder (`sami.evaluation.metrics_step`)."""

    model: str | None = Field(None, description="the evaluated model's label")
    model_ref: str | None = Field(None, description="the evaluated model's reference")
    n_queries: int | None = None
    n_constitutions: int | list[int] | None = Field(None, description="constitutions per query of the MI")
    mi_kind: str | None = Field(None, description="sign_patterns or training_pairs")
    n_sign_patterns: int | list[int] | None = None
    mi_sampled: bool | None = None
    mi_eos: str | None = None
    mi: Number = None
    mi_sem: Number = None
    mi_bound: Number = None
    sami_loss: Number = None
    accuracy: Number = None
    mean_length: LengthsBlock = Field(None, description="mean response lengths in characters")
    mean_length_tokens: LengthsBlock = Field(None, description="mean response lengths in tokens")
    win_rates: dict[str, WinRateBlock] = Field(default_factory=dict, description="baseline -> win-rate summary")
    judge: Block | None = Field(None, description="the judge identity of every judgment")
    adherence: AdherenceDict = None
    contrast: ContrastDict = None
    baselines: dict[str, BaselineMetrics] = Field(default_factory=dict)
    subsets: dict[str, SubsetMetrics] = Field(default_factory=dict, description="subset name -> its metrics")


# ---- report/summary.json ----------------------------------------------------------------------------------------


class TrainSummary(_File):
    """An iteration's training (`sami.report.summary.train_summary`)."""

    steps: int | None = None
    first_loss: Number = None
    final_loss: Number = None


class SampleCounts(_File):
    """Kept and dropped samples of an iteration (`sami.report.summary.sample_counts`)."""

    kept: int | None = None
    dropped: int | None = None
    drop_reasons: dict[str, int] = Field(default_factory=dict, description="reason -> samples dropped for it")


class IfevalResult(_File):
    """IFEval's accuracies and their standard errors (`iter-T/eval/ifeval/results.json`)."""

    prompt_level_strict_acc: Number = None
    prompt_level_strict_acc_stderr: Number = None
    inst_level_strict_acc: Number = None
    inst_level_strict_acc_stderr: Number = None
    prompt_level_loose_acc: Number = None
    prompt_level_loose_acc_stderr: Number = None
    inst_level_loose_acc: Number = None
    inst_level_loose_acc_stderr: Number = None
    num_prompts: int | None = None


class Benchmarks(_File):
    ifeval: Annotated[IfevalResult | None, BeforeValidator(_empty_block)] = None


class Principle(_File):
    name: str = ""
    principle: str = ""
    antithesis: str = ""


class RunConstitutions(_File):
    source: str | None = None
    task: str | None = None
    principles: list[Principle] = Field(default_factory=list)
    scheme: str | None = None
    n_constitutions: int | str | None = None


class RunInfo(_File):
    """summary.json's `run`: name, model, principles and progress (`sami.report.summary.run_info`)."""

    name: str | None = None
    model: str | None = None
    constitutions: Annotated[RunConstitutions, BeforeValidator(lambda v: v or {})] = Field(
        default_factory=RunConstitutions
    )
    planned_iterations: int | None = None
    steps: list[int] | None = None
    started: str | None = None
    finished: str | None = None


# A block that may be absent, null or `{}` (all read as None).
AdherenceBlock = Annotated[Adherence | None, BeforeValidator(_empty_block)]


class SubsetSummary(_File):
    """One subset of an evaluation in summary.json."""

    n_queries: int | None = None
    mi: Number = None
    mi_sem: Number = None
    mi_bound: Number = None
    mean_length: LengthsBlock = None
    mean_length_tokens: LengthsBlock = None
    win_rates: dict[str, WinRate] = Field(default_factory=dict, description="baseline -> win-rate summary")
    adherence: AdherenceBlock = None


class EvaluationSummary(_File):
    """The evaluation keys of an iteration (or of a comparison model) in summary.json."""

    model: str | None = None
    n_queries: int | None = None
    mi: Number = None
    mi_sem: Number = None
    mi_bound: Number = None
    sami_loss: Number = None
    accuracy: Number = None
    n_constitutions: int | list[int] | None = None
    mi_kind: str | None = None
    n_sign_patterns: int | list[int] | None = None
    mi_sampled: bool | None = None
    mean_length: LengthsBlock = None
    mean_length_tokens: LengthsBlock = None
    win_rates: dict[str, WinRate] = Field(default_factory=dict, description="baseline -> win-rate summary")
    adherence: AdherenceBlock = None
    contrast: Annotated[Contrast | None, BeforeValidator(_empty_block)] = None
    benchmarks: Benchmarks = Field(default_factory=Benchmarks)
    subsets: dict[str, SubsetSummary] = Field(default_factory=dict)
    train: Annotated[TrainSummary | None, BeforeValidator(_empty_block)] = None
    missing: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class ComparisonSummary(EvaluationSummary):
    iteration: int
    vs_sami: Annotated[WinRate | None, BeforeValidator(_empty_block)] = None


class IterationSummary(EvaluationSummary):
    iteration: int
    samples: Annotated[SampleCounts | None, BeforeValidator(_empty_block)] = None
    comparisons: dict[str, ComparisonSummary] = Field(default_factory=dict)


class Summary(_File):
    """`report/summary.json` (`sami.report.summary.build_summary`)."""

    run: RunInfo = Field(default_factory=RunInfo, description="name, model, principles and progress of the run")
    iterations: list[IterationSummary] = Field(default_factory=list)
    length_unit: Literal["characters", "tokens"] = "tokens"
    config: Block = Field(default_factory=dict, description="the run config without secrets")
    problems: list[str] = Field(default_factory=list)
    incomplete: dict[str, str] = Field(default_factory=dict, description="stage -> what failed in it")


def as_summary(summary: Summary | dict, source: str | Path = "report/summary.json") -> Summary:
    """`summary` as the `Summary` model (a dict is validated: `SamiInputError` naming `source` and the field)."""
    return summary if isinstance(summary, Summary) else parse_run_file(Summary, summary, source)


# ---- reading and writing ----------------------------------------------------------------------------------------


def parse_run_file(model: type[M], data: Any, source: str | Path) -> M:
    """`data` as `model`; `SamiInputError` naming `source` and the field when it does not fit."""
    if not isinstance(data, dict):
        raise SamiInputError(f"{source}: expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == BLOCK_ERROR:  # a field inside a block checked by `_checked`
            raise SamiInputError(f"{source}: {'.'.join(map(str, first['loc']))}.{first['ctx']['line']}") from None
        raise SamiInputError(describe_validation_error(e, str(source))) from None


def read_run_file(model: type[M], path: str | Path, name: str | None = None) -> M | None:
    """The run file at `path` as `model` (None when absent); unreadable JSON or a wrong field: `SamiInputError`
    naming the file (as `name`, default the path) and the field."""
    path = Path(path)
    if not path.is_file():
        return None
    source = name or str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SamiInputError(f"{source}: unreadable ({getattr(e, 'msg', e)})") from None
    return parse_run_file(model, data, source)


def dump_run_file(value: BaseModel) -> Block:
    """The JSON object of a run file: the keys that were set, in the model's order (python mode: a NaN stays a
    NaN, as `json.dumps` wrote it before the models)."""
    return value.model_dump(exclude_unset=True)


def write_run_file(path: str | Path, value: BaseModel) -> Block:
    """Write `value` atomically to `path`; returns what was written."""
    data = dump_run_file(value)
    atomic_write_json(path, data)
    return data
