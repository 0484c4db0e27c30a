"""The evaluation stage: responses, pairwise judgments against baselines, win rates, MI and lengths.

`run_evaluation(settings, model_ref, out_dir, steps=("responses", "judgments", "metrics"), ...)` runs three
file-to-file steps (see docs/evaluation.md); the files of the output folder (`sami.layout.EvalLayout`):

- responses step (every generation and every model forward):
  - `responses.jsonl`: one greedy response per (side, query) under the query's positive constitution: `{"id":
    "<side>:<query_id>", "query_id", "side": "model" | "<baseline name>", "model", "query", "constitution",
    "response", "num_tokens", "separator", "ended_with_eos"}`.
  - `mi_responses.jsonl`: the evaluated model's greedy responses under the MI constitutions of each query (every
    sign pattern of the positive constitution, or the C training-style ones): `{"id", "query", "constitutions",
    "responses", "num_tokens", "separators", "ended_with_eos"}`; `mi_responses-<baseline>.jsonl` the same for an hf
    baseline.
  - `antithesis_responses.jsonl` (when principles carry checks): the response under each query's antithesis
    constitution (the positive one with every sign flipped), `{"id": query_id, "query_id", "query",
    "constitution", "response", "num_tokens", "reused"}`; `reused` when taken from a response already written
    under the same constitution.
  - `contrast_responses.jsonl` (with `contrast=True`, the pipeline's iteration 0): responses under the positive
    constitution with one principle flipped, `{"id": "<principle>:<query_id>", "principle", ...}`.
  - `scores.json`: the per-query intrinsic scores (`read_scores`), so that the metrics step loads no model.
- judgments step: `judgments-<baseline>.jsonl`, one judgment per query (see `sami.evaluation.judges`), every
  record naming its judge (`JudgeSettings.identity()`); another judge's file is refused or moved aside.
- metrics step: `metrics.json`: `{"model", "n_queries", "n_constitutions", "mi_kind", "n_sign_patterns",
  "mi_sampled", "mi", "mi_bound", "mean_length" (characters), "mean_length_tokens", "win_rates": {baseline:
  summary}, "judge", "adherence" (see `sami.evaluation.adherence`), "contrast", "baselines", "subsets"}`.

Every file grows in chunks that are written atomically, and a rerun skips ids already there, so an interrupted
evaluation resumes where it stopped and judges each query exactly once. The constitutions of a query (and the
judge's order and principle shuffle) are drawn from RNGs seeded by the query id, so they do not depend on which
queries are still to do. `sami.stage_settings` gives a run's evaluation settings and baselines.
"""

from __future__ import annotations

import gc
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sami.data import Query, QuerySource
from sami.errors import SamiInputError
from sami.evaluation.adherence import eval_adherence, query_subset
from sami.evaluation.contrast import contrast_metrics
from sami.evaluation.judge_settings import JudgeSettings, LocalJudgeSettings
from sami.evaluation.judges import PairItem, make_judge
from sami.evaluation.responses import (
    Progress,
    generate_mi,
    generate_patterns,
    generate_side,
    generate_under,
    known_responses,
)
from sami.evaluation.tables import metrics_table
from sami.evaluation.winrate import summarize
from sami.generation import GenerationSettings, HFGeneration
from sami.io import JsonlStore, atomic_write_json, read_jsonl
from sami.layout import EvalLayout

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
TASKS = ("dialogue", "summarization")


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
    batch_size: int = Field(8, ge=1, description="hf generation: prompts per batch; also queries per MI forward")
    chunk_size: int = Field(8, ge=1, description="queries generated or judged between two writes to disk")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = Field(
        None, description="weights dtype of the evaluated and baseline models (None: float32)"
    )
    device: str | None = Field(None, description="torch device (None: cuda when available, else cpu)")
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


# ---- helpers -----------------------------------------------------------------------------------------
def _baseline(spec: str | BaselineSettings) -> BaselineSettings:
    return spec if isinstance(spec, BaselineSettings) else BaselineSettings(model=str(spec))


def _device(settings: EvaluationSettings) -> str:
    if settings.device:
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _template(task: str, style: str, template=None):
    from sami.prompts import get_template

    if template is not None and template.style == style:
        return template
    return get_template(task, style)


def _tokens(tokenizer, text: str) -> int:
    """Length of one response in tokens (`sami.evaluation.metrics.response_lengths`)."""
    from sami.evaluation.metrics import response_lengths

    return response_lengths(tokenizer, [text])[0]


def _free() -> None:
    """Collect garbage and release cached GPU memory (after dropping the last reference to a model)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def load_side_responses(path: str | Path, side: str = "model") -> dict[str, str]:
    """`{query_id: response}` of one side of a `responses.jsonl` (e.g. iteration 0's base-model responses)."""
    return {
        str(r["query_id"]): str(r["response"])
        for r in read_jsonl(path)
        if r.get("side") == side and "query_id" in r and "response" in r
    }


def query_constitutions(cset, queries: Sequence[Query], settings: EvaluationSettings) -> dict[str, list]:
    """The C constitutions of each query (first = the positive one), seeded by `settings.seed` and the query id."""
    from sami.constitutions import sample_constitutions

    scheme = settings.scheme or "uniform"
    n = settings.n_constitutions or 2
    out = {}
    for q in queries:
        rng = random.Random(f"{settings.seed}:{q.id}")
        out[q.id] = sample_constitutions(cset, scheme, n, rng, query=q, mode=settings.mode)
    return out


# ---- the stage -----------------------------------------------------------------------------------------
STEPS = ("responses", "judgments", "metrics")
# The keys of each entry of metrics.json's `subsets` (what sami.report.summary.subset_entry reads).
SUBSET_KEYS = ("n_queries", "mi", "mi_sem", "mi_bound", "mean_length", "mean_length_tokens", "win_rates", "adherence")


@dataclass
class _Evaluation:
    """What the three steps share: the resolved inputs of one evaluation and the lazily loaded model/tokenizer."""

    settings: EvaluationSettings
    model_ref: str
    label: str
    queries: list[Query]
    cset: Any
    task: str
    template: Any
    positive: dict
    constitutions: dict[str, list]
    mi_constitutions: dict[str, list]  # the constitutions of each mi_responses.jsonl record, in order
    mi_sampled: bool
    files: EvalLayout
    baselines: dict[str, BaselineSettings]
    principles: list[str]
    contrast_queries: list[Query]
    trust_remote_code: bool
    attn_implementation: str = "sdpa"
    model: Any = None
    tokenizer: Any = None
    loaded_here: bool = False

    def get_tokenizer(self):
        from sami.models import load_tokenizer

        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.model_ref, trust_remote_code=self.trust_remote_code)
        return self.tokenizer

    def get_model(self):
        from sami.models import load_model

        if self.model is None:
            self.model = load_model(
                self.model_ref, dtype=self.settings.dtype, device=_device(self.settings),
                trust_remote_code=self.trust_remote_code, attn_implementation=self.attn_implementation,
            )  # fmt: skip
            self.model.eval()
            self.loaded_here = True
        return self.model

    def release(self) -> None:
        if self.loaded_here and self.model is not None:
            self.model = None
            _free()


def _prepare(settings, model_ref, out_dir, *, queries, cset, template, model, tokenizer, model_label, baselines,
             contrast, trust_remote_code, attn_implementation="sdpa") -> _Evaluation:  # fmt: skip
    """Resolve the inputs every step needs (queries, constitutions, prompts, baselines); loads no model."""
    from sami.constitutions import load_constitutions
    from sami.data import load_queries

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = settings.baselines if baselines is None else baselines
    resolved = {name: _baseline(spec) for name, spec in specs.items()}
    for name in resolved:
        if name == "model" or not _NAME.match(name):
            raise SamiInputError(f"baselines: bad name {name!r} (use letters, digits, '_', '-', '.'; not 'model')")
    if queries is None:
        if settings.queries is None:
            raise SamiInputError("evaluation.queries: no evaluation queries given")
        queries = load_queries(settings.queries)
    queries = list(queries)[: settings.limit] if settings.limit else list(queries)
    if not queries:
        raise SamiInputError("evaluation: no queries to evaluate")
    seen: set[str] = set()
    for q in queries:
        if q.id in seen:
            raise SamiInputError(f"evaluation queries: duplicate id {q.id!r}")
        seen.add(q.id)
    if cset is None:
        if settings.constitutions is None:
            raise SamiInputError("evaluation.constitutions: no constitution set given")
        cset = load_constitutions(settings.constitutions)
    task = settings.task or (cset.task if cset.task in TASKS else "dialogue")
    constitutions = query_constitutions(cset, queries, settings)
    mi_constitutions, sampled = constitutions, False
    if settings.mi == "sign_patterns":
        mi_constitutions = {}
        for qid, cs in constitutions.items():
            mi_constitutions[qid], was_sampled = sign_patterns(cs[0], settings.mi_max_patterns, settings.seed)
            sampled = sampled or was_sampled
    return _Evaluation(
        settings=settings,
        model_ref=str(model_ref),
        label=model_label or str(model_ref),
        queries=queries,
        cset=cset,
        task=task,
        template=_template(task, settings.style, template),
        positive={qid: cs[0] for qid, cs in constitutions.items()},
        constitutions=constitutions,
        mi_constitutions=mi_constitutions,
        mi_sampled=sampled,
        files=EvalLayout(out_dir),
        baselines=resolved,
        principles=[p.name for p in cset.pool(settings.mode)] if contrast else [],
        contrast_queries=queries[: settings.contrast_limit] if settings.contrast_limit else queries,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        model=model,
        tokenizer=tokenizer,
    )


def run_evaluation(
    settings: EvaluationSettings,
    model_ref: str,
    out_dir: str | Path,
    *,
    steps: Sequence[str] = STEPS,
    queries: Sequence[Query] | None = None,
    cset=None,
    template=None,
    model=None,
    tokenizer=None,
    model_label: str | None = None,
    baselines: dict[str, str | BaselineSettings] | None = None,
    baseline_responses: dict[str, dict[str, str]] | None = None,
    baseline_evals: dict[str, str | Path] | None = None,
    judge: bool = True,
    judge_model=None,
    judge_tokenizer=None,
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
    contrast: bool = False,
    rejudge: bool = False,
    console=None,
) -> dict | None:
    """Evaluate `model_ref` into `out_dir` in file-to-file `steps` (any of, run in this order):

    - "responses": every generation and every forward pass of the evaluated model: `responses.jsonl` (model and
      baselines), `mi_responses.jsonl`, `antithesis_responses.jsonl`, `contrast_responses.jsonl` and the per-query
      intrinsic scores `scores.json`. Resumable: what is on disk is kept, and with every file complete nothing is
      loaded or rewritten.
    - "judgments": `judgments-<baseline>.jsonl` (loads only the judge, and the tokenizer for the lengths).
    - "metrics": `metrics.json` from the files alone (loads no model); returned.

    Returns the metrics when "metrics" is in `steps`, else None.

    - `queries`/`cset`: the evaluation queries and the `ConstitutionSet` (default: loaded from `settings.queries`
      and `settings.constitutions`); `template`: a `PromptTemplate` (default: the built-in one for the task/style).
    - `model`/`tokenizer`: the evaluated model already loaded (else loaded from `model_ref` when a step needs it);
      `model_label` names it in the records (default `model_ref`).
    - `baselines`: name -> model reference or `BaselineSettings` (default `settings.baselines`);
      `baseline_responses`: name -> {query_id: response} already generated (e.g. iteration 0's base responses),
      used instead of generating; missing ids are generated. `baseline_evals`: name -> an evaluation folder of
      that baseline as the evaluated model under the same settings (in a run: iter-0/eval for "base"); its
      responses under the MI constitutions and their scores are taken from there instead of loading the model.
    - `judge=False`: no baselines and no judgments step (e.g. iteration 0 against itself); `judge_model`/
      `judge_tokenizer`: a loaded local judge model.
    - `contrast=True`: the contrast check (`contrast_metrics`): per principle, how much flipping it alone changes
      the model's responses (MI of the pair, and adherence where checkable); warns naming weak principles.
    - `rejudge` (or `settings.rejudge`): judge again where a judgments file was written by another judge.
    """
    from rich.console import Console

    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SamiInputError(f"evaluation steps: unknown {unknown} (expected some of {', '.join(STEPS)})")
    console = console or Console(stderr=True)
    ev = _prepare(
        settings, model_ref, out_dir, queries=queries, cset=cset, template=template, model=model,
        tokenizer=tokenizer, model_label=model_label, baselines={} if not judge else baselines, contrast=contrast,
        trust_remote_code=trust_remote_code, attn_implementation=attn_implementation,
    )  # fmt: skip
    with Progress(console) as progress:
        if "responses" in steps:
            responses_step(ev, baseline_responses or {}, progress, baseline_evals=baseline_evals or {})
        if "judgments" in steps and judge:
            judgments_step(
                ev, progress, judge_model=judge_model, judge_tokenizer=judge_tokenizer,
                rejudge=rejudge or settings.rejudge,
            )  # fmt: skip
    if "metrics" not in steps:
        return None
    metrics = metrics_step(ev)
    console.print(metrics_table(metrics))
    for warning in (metrics.get("contrast") or {}).get("warnings", []):
        log.warning("%s", warning)
    return metrics


def _stores(ev: _Evaluation) -> tuple[JsonlStore, JsonlStore, JsonlStore | None, JsonlStore | None]:
    """responses, mi_responses, antithesis_responses (when adherence is measured), contrast_responses."""
    files = ev.files
    checkable = ev.settings.adherence and ev.cset.checkable
    return (
        JsonlStore(files.responses),
        JsonlStore(files.mi_responses),
        JsonlStore(files.antithesis_responses) if checkable else None,
        JsonlStore(files.contrast_responses) if ev.principles else None,
    )


def responses_step(
    ev: _Evaluation, baseline_responses: dict[str, dict[str, str]], progress, *, baseline_evals=None
) -> None:
    """Every generation and forward pass: the evaluated model's responses (positive, all C, antithesis, contrast),
    their scores (`scores.json`), then the baselines' responses (one baseline model loaded at a time)."""
    from sami.generation import make_generator

    settings, queries, positive = ev.settings, ev.queries, ev.positive
    responses, mi_store, anti_store, contrast_store = _stores(ev)
    gen_settings = HFGeneration(batch_size=settings.batch_size, dtype=settings.dtype)
    _check_mi_store(ev, mi_store)
    todo = [q for q in queries if f"model:{q.id}" not in responses]
    mi_todo = [q for q in queries if q.id not in mi_store] if settings.intrinsic else []
    patterns = settings.mi == "sign_patterns"
    anti_todo = [q for q in queries if q.id not in anti_store] if anti_store is not None else []
    contrast_todo = [
        (name, q)
        for name in ev.principles
        for q in ev.contrast_queries
        if name in positive[q.id].signs() and f"{name}:{q.id}" not in contrast_store
    ]
    if todo or mi_todo or anti_todo or contrast_todo:
        generator = make_generator(gen_settings, model=ev.get_model(), tokenizer=ev.get_tokenizer())
        if todo or mi_todo:
            advance = progress.task(f"responses of {ev.label}", len(todo))
            generate_side(
                responses, generator, ev.template, todo, positive, side="model", label=ev.label, settings=settings,
                advance=advance,
            )  # fmt: skip
        if mi_todo and not patterns:
            generate_mi(mi_store, responses, generator, ev.template, mi_todo, ev.constitutions, settings, progress)
        if mi_todo and patterns:  # the antithesis and one-flipped responses below are then taken from these
            known = known_responses(responses, anti_store, contrast_store)
            generate_patterns(mi_store, generator, ev.template, mi_todo, ev.mi_constitutions, settings, progress,
                               known=known)  # fmt: skip
        if anti_todo:
            jobs = [(q.id, q, positive[q.id].flipped(), {}) for q in anti_todo]
            known = known_responses(responses, mi_store)
            generate_under(anti_store, generator, ev.template, jobs, settings, progress,
                            "responses under the antithesis", known=known)  # fmt: skip
        if contrast_todo:
            jobs = [(f"{n}:{q.id}", q, positive[q.id].flipped({n}), {"principle": n}) for n, q in contrast_todo]
            known = known_responses(responses, mi_store, anti_store)
            generate_under(contrast_store, generator, ev.template, jobs, settings, progress,
                            "responses with one principle flipped", known=known)  # fmt: skip
        generator = None
    responses.flush()
    _score(ev, mi_store, responses, contrast_store)
    ev.release()
    _baseline_responses(ev, responses, baseline_responses, gen_settings, progress, baseline_evals or {})


def _eos_policy(settings: EvaluationSettings) -> str:
    """The EOS policy of the intrinsic metrics: `eos`, the older `include_eos`, else the MI kind's default."""
    from sami.tokens import resolve_eos

    if settings.eos is None and settings.include_eos is None:
        return "never" if settings.mi == "sign_patterns" else "generated"
    return resolve_eos(settings.eos if settings.include_eos is None else None, settings.include_eos)


def sign_patterns(positive, cap: int = 16, seed: int = 0) -> tuple[list, bool]:
    """Every sign pattern of `positive`'s principles (2^k constitutions, `positive` first, then in binary order of
    the flipped principles), or, when 2^k > `cap`, `positive` and a sample of `cap − 1` others seeded by `seed`
    and k only (the same patterns for every query with k principles). Returns `(constitutions, sampled)`."""
    import itertools

    names = [p.name for p, _ in positive.items]
    flips = [
        {name for name, bit in zip(names, bits, strict=True) if bit}
        for bits in itertools.product((False, True), repeat=len(names))
    ][1:]
    sampled = len(flips) + 1 > cap
    if sampled:
        rng = random.Random(f"{seed}:sign-patterns:{len(names)}")
        flips = [flips[i] for i in sorted(rng.sample(range(len(flips)), cap - 1))]
    return [positive, *(positive.flipped(f) for f in flips)], sampled


def _check_mi_store(ev: _Evaluation, mi_store: JsonlStore) -> None:
    """mi_responses.jsonl must hold the constitutions this evaluation scores (the MI kind and C did not change)."""
    from sami.constitutions import Constitution

    for r in mi_store.records:
        expected = ev.mi_constitutions.get(str(r["id"]))
        if expected is None:
            continue
        if [Constitution.from_dict(c).label() for c in r["constitutions"]] != [c.label() for c in expected]:
            raise SamiInputError(
                f"{ev.files.mi_responses}: query {r['id']} was written under other constitutions than evaluation.mi "
                f"= {ev.settings.mi!r} draws (the MI kind, C or scheme changed); evaluate into another folder"
            )


def read_scores(path: str | Path) -> dict:
    """`scores.json` of an evaluation folder (`{}` when absent): `{"eos": policy, "mi": kind, "intrinsic":
    {query_id: {"mi", "mi_bound", "sami_loss", "accuracy", "lengths"}}, "contrast": {principle: {query_id: mi}},
    "baselines": {name: {query_id: same as intrinsic}}, "baselines_skipped": {name: why its model did not load}}`."""
    import json

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SamiInputError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise SamiInputError(f"{path}: expected a JSON object")
    return data


def _score(ev: _Evaluation, mi_store: JsonlStore, responses: JsonlStore, contrast_store: JsonlStore | None) -> None:
    """Score what is not scored yet into `scores.json` (the per-query MI, bound, loss, accuracy and lengths of
    mi_responses.jsonl; the pair MI of each contrast response); rewrites the file only when something was added."""
    settings = ev.settings
    policy = _eos_policy(settings)
    old = read_scores(ev.files.scores)
    scores = {"eos": policy, "mi": settings.mi, "intrinsic": {}, "contrast": {}, "baselines": {}}
    if old.get("eos") == policy and old.get("mi", "training_pairs") == settings.mi:
        scores["intrinsic"] = dict(old.get("intrinsic") or {})
        scores["baselines"] = {k: dict(v) for k, v in (old.get("baselines") or {}).items()}
        if "baselines_skipped" in old:
            scores["baselines_skipped"] = dict(old["baselines_skipped"])
        scores["contrast"] = {k: dict(v) for k, v in (old.get("contrast") or {}).items()}
    changed = False
    ids = {q.id for q in ev.queries}
    if settings.intrinsic:
        records = [r for r in mi_store.records if str(r["id"]) in ids and str(r["id"]) not in scores["intrinsic"]]
        if records:
            scores["intrinsic"].update(_intrinsic(ev.get_model(), ev.get_tokenizer(), records, ev.template, settings)
                                       ["per_query"])  # fmt: skip
            changed = True
    if contrast_store is not None:
        by_id = {str(r["id"]): r for r in responses.records}
        flipped = {str(r["id"]): r for r in contrast_store.records}
        for name in ev.principles:
            done = scores["contrast"].setdefault(name, {})
            pairs = [
                (q, by_id[f"model:{q.id}"], flipped[f"{name}:{q.id}"])
                for q in ev.contrast_queries
                if q.id not in done and f"model:{q.id}" in by_id and f"{name}:{q.id}" in flipped
            ]
            records = [
                {"id": q.id, "query": q.query,
                 "constitutions": [ev.positive[q.id], ev.positive[q.id].flipped({name})],
                 "responses": [a["response"], b["response"]],
                 "separators": [a.get("separator"), b.get("separator")],
                 "ended_with_eos": [a.get("ended_with_eos"), b.get("ended_with_eos")]}
                for q, a, b in pairs
            ]  # fmt: skip
            if records:
                per_query = _intrinsic(ev.get_model(), ev.get_tokenizer(), records, ev.template, settings)["per_query"]
                done.update({qid: v["mi"] for qid, v in per_query.items()})
                changed = True
    if changed or old != scores and (settings.intrinsic or contrast_store is not None):
        atomic_write_json(ev.files.scores, scores)


def user_turn_template(task: str):
    """The chat template of an instruct baseline as the authors prompted theirs (mistral-7b-instruct v0.1): the
    instruction, the constitution and the query in the user turn, no system message."""
    from sami.prompts import get_template

    chat = get_template(task, "chat")
    text = f"{chat.system}\n\n{chat.generation}"
    return get_template(task, "chat", generation=text, training=text, system="")


def baseline_template(ev: _Evaluation, spec: BaselineSettings, tokenizer=None):
    """The prompts of one baseline: the evaluated model's own when the baseline has its style (e.g. the run's base
    model); a chat style in the user turn (`user_turn_template`) for `style: chat`, or for `style: None` when the
    baseline's tokenizer has a chat template; else the built-in template of the evaluation's style."""
    if spec.style is not None and spec.style == ev.settings.style:
        return ev.template
    style = spec.style
    if style is None:
        style = "chat" if tokenizer is not None and getattr(tokenizer, "chat_template", None) else ev.settings.style
    if style == "chat":
        return user_turn_template(ev.task)
    return _template(ev.task, style, ev.template)


def _reuse_intrinsic(ev, name: str, source: EvalLayout) -> None:
    """Copy a baseline's responses under the MI constitutions and their scores from `source`, the baseline's own
    evaluation under the same settings, for the queries whose constitutions match there (the rest are generated)."""
    theirs = read_scores(source.scores)
    if theirs.get("eos") != _eos_policy(ev.settings) or theirs.get("mi", "training_pairs") != ev.settings.mi:
        return
    store = JsonlStore(ev.files.baseline_mi_responses(name))
    wanted = {q.id: [c.to_dict() for c in ev.mi_constitutions[q.id]] for q in ev.queries if q.id not in store}
    intrinsic = theirs.get("intrinsic") or {}
    copied = {}
    for record in read_jsonl(source.mi_responses) if source.mi_responses.is_file() else []:
        qid = str(record.get("id"))
        if qid in wanted and qid in intrinsic and record.get("constitutions") == wanted[qid]:
            store.add(record)
            copied[qid] = intrinsic[qid]
    if copied:
        store.flush()
        scores = read_scores(ev.files.scores)
        scores.setdefault("baselines", {}).setdefault(name, {}).update(copied)
        atomic_write_json(ev.files.scores, scores)


def _baseline_responses(ev, responses, baseline_responses, gen_settings, progress, baseline_evals) -> None:
    """The baselines' responses: precomputed ones first, the rest generated (one baseline model at a time); with
    `baseline_intrinsic`, an hf baseline's responses under the MI constitutions and their scores too (taken from
    `baseline_evals[name]` where that folder has them)."""
    from sami.generation import make_generator
    from sami.models import load_model, load_tokenizer

    settings, queries, positive = ev.settings, ev.queries, ev.positive
    scores = read_scores(ev.files.scores)
    for name, spec in ev.baselines.items():
        given = baseline_responses.get(name, {})
        for q in queries:
            if f"{name}:{q.id}" not in responses and q.id in given:
                responses.add(
                    {
                        "id": f"{name}:{q.id}",
                        "query_id": q.id,
                        "side": name,
                        "model": spec.model,
                        "query": q.query,
                        "constitution": positive[q.id].to_dict(),
                        "response": given[q.id],
                        "num_tokens": _tokens(ev.get_tokenizer(), given[q.id]),
                    }
                )
        responses.flush()
        gen = spec.generation or gen_settings.model_copy(
            update={"model": spec.model, "device": _device(settings), "trust_remote_code": ev.trust_remote_code}
        )
        todo = [q for q in queries if f"{name}:{q.id}" not in responses]
        intrinsic = settings.intrinsic and settings.baseline_intrinsic
        if intrinsic and gen.backend != "hf":
            log.info("baseline %s: no MI or lengths under the MI constitutions (a %s model)", name, gen.backend)
            intrinsic = False
        if intrinsic and name in (scores.get("baselines_skipped") or {}):
            intrinsic = False  # its model did not load before (see scores.json)
        if intrinsic and name in baseline_evals:
            _reuse_intrinsic(ev, name, EvalLayout(Path(baseline_evals[name])))
            scores = read_scores(ev.files.scores)
        mi_store = JsonlStore(ev.files.baseline_mi_responses(name)) if intrinsic else None
        mi_todo = [q for q in queries if q.id not in mi_store] if mi_store is not None else []
        done = (scores.get("baselines") or {}).get(name) or {}
        unscored = [r for r in (mi_store.records if mi_store is not None else []) if str(r["id"]) not in done]
        if not todo and not mi_todo and not unscored:
            continue
        if gen.backend != "hf":
            advance = progress.task(f"responses of baseline {name}", len(todo))
            generate_side(
                responses, make_generator(gen), baseline_template(ev, spec), todo, positive, side=name,
                label=spec.model, settings=settings, advance=advance,
            )  # fmt: skip
            continue
        try:
            tokenizer = load_tokenizer(gen.model, trust_remote_code=gen.trust_remote_code)
            model = load_model(gen.model, dtype=gen.dtype, device=gen.device, trust_remote_code=gen.trust_remote_code)
            model.eval()
        except (SamiInputError, OSError) as e:
            if todo:
                raise
            log.info("baseline %s: no MI or lengths (its model does not load here: %s)", name, e)
            scores = read_scores(ev.files.scores)
            scores.setdefault("baselines_skipped", {})[name] = f"{gen.model}: {e}"
            atomic_write_json(ev.files.scores, scores)
            continue
        btemplate = baseline_template(ev, spec, tokenizer)
        generator = make_generator(gen, model=model, tokenizer=tokenizer)
        advance = progress.task(f"responses of baseline {name}", len(todo))
        generate_side(
            responses, generator, btemplate, todo, positive, side=name, label=spec.model, settings=settings,
            advance=advance,
        )  # fmt: skip
        if mi_store is not None:
            known = {
                (str(r["query_id"]), positive[str(r["query_id"])].label()):
                    (r["response"], int(r.get("num_tokens", 0)), r.get("separator"), r.get("ended_with_eos"))
                for r in responses.records
                if r.get("side") == name and str(r["query_id"]) in positive and "separator" in r
            }  # fmt: skip
            generate_patterns(mi_store, generator, btemplate, mi_todo, ev.mi_constitutions, settings, progress,
                               known=known)  # fmt: skip
            records = [r for r in mi_store.records if str(r["id"]) not in done]
            if records:
                per_query = _intrinsic(model, tokenizer, records, btemplate, settings)["per_query"]
                scores = read_scores(ev.files.scores)
                scores.setdefault("baselines", {}).setdefault(name, {}).update(per_query)
                atomic_write_json(ev.files.scores, scores)
        generator = model = None
        _free()


RETRIED = ("failed", "unparsed")  # verdicts a rerun of the judgments step asks for again


def judgments_step(
    ev: _Evaluation, progress, *, judge_model=None, judge_tokenizer=None, rejudge: bool = False
) -> None:
    """One judgments file per baseline, judging the queries whose two responses exist; ids already judged are
    skipped."""
    by_id = {str(r["id"]): r for r in JsonlStore(ev.files.responses).records}
    judge_obj = None
    identity = ev.settings.judge.identity()
    for name in ev.baselines:
        store = _judgments_store(ev.files, name, identity, rejudge=rejudge)
        retried = store.drop(lambda r: r.get("status") in RETRIED)  # failed requests and unparsed answers
        if retried:
            log.info("%s: judging %d failed or unparsed verdicts again", store.path.name, retried)
        pending = [
            q for q in ev.queries if q.id not in store and f"model:{q.id}" in by_id and f"{name}:{q.id}" in by_id
        ]
        if pending and judge_obj is None:
            judge_obj = make_judge(ev.settings.judge, model=judge_model, tokenizer=judge_tokenizer)
        advance = progress.task(f"judging vs {name}", len(pending))
        for start in range(0, len(pending), ev.settings.chunk_size):
            chunk = pending[start : start + ev.settings.chunk_size]
            items = []
            for q in chunk:
                mine, theirs = by_id[f"model:{q.id}"]["response"], by_id[f"{name}:{q.id}"]["response"]
                items.append(
                    PairItem(
                        id=q.id,
                        query=q.query,
                        constitution=ev.positive[q.id],
                        model_response=mine,
                        baseline_response=theirs,
                        model_length=len(mine),
                        baseline_length=len(theirs),
                        model_length_tokens=_tokens(ev.get_tokenizer(), mine),
                        baseline_length_tokens=_tokens(ev.get_tokenizer(), theirs),
                        subset=query_subset(q),
                    )
                )
            for record in judge_obj.judge(items, model=ev.label, baseline=name, task=ev.task):
                store.add(record)
            store.flush()
            advance(len(chunk))
        store.flush()
    if judge_obj is not None:
        judge_obj.close()


def _n_constitutions(ev: _Evaluation) -> int | list[int]:
    """Constitutions per query of the intrinsic metrics (one number, or the sorted distinct counts)."""
    sizes = sorted({len(cs) for cs in ev.mi_constitutions.values()})
    return sizes[0] if len(sizes) == 1 else sizes


def judge_hash(identity: dict) -> str:
    """8 hex digits naming a judge identity (the suffix of a judgments file kept aside)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:8]


def _judgments_store(files: EvalLayout, baseline: str, identity: dict, *, rejudge: bool) -> JsonlStore:
    """The judgments file of `baseline`, holding only verdicts of the judge `identity`. A file written by another
    judge is moved aside (`rejudge`) or refused: verdicts of two judges never mix, and none is deleted."""
    path = files.judgments(baseline)
    store = JsonlStore(path)
    foreign = [r.get("judge") for r in store.records if r.get("judge") != identity]
    if not foreign:
        return store
    other = foreign[0] if isinstance(foreign[0], dict) else {}
    aside = files.judgments_aside(baseline, judge_hash(other))
    if not rejudge:
        who = f"{other.get('kind', '?')}/{other.get('model') or other.get('model_name') or '?'}"
        raise SamiInputError(
            f"{path}: judged by another judge ({who}); pass --rejudge to judge again (the old verdicts are kept as "
            f"{aside.name})"
        )
    if aside.exists():
        raise SamiInputError(f"{aside}: already exists; move it away before judging {baseline} again")
    path.rename(aside)
    log.warning("%s: judged by another judge; its verdicts are kept as %s, judging again", path, aside.name)
    return JsonlStore(path)


def metrics_step(ev: _Evaluation) -> dict:
    """`metrics.json` from the evaluation's files alone (scores.json, the response and judgment files), pooled and,
    when the queries come from two or more subsets, per subset (`subsets`)."""
    settings, queries = ev.settings, ev.queries
    ids = {q.id for q in queries}
    responses, mi_store, anti_store, contrast_store = _stores(ev)
    scores = read_scores(ev.files.scores)
    judgments: dict[str, list[dict]] = {}
    judges: list[dict] = []
    for name in ev.baselines:
        path = ev.files.judgments(name)
        if path.is_file():
            judgments[name] = [r for r in read_jsonl(path) if str(r["id"]) in ids]
            for record in judgments[name]:
                if record.get("judge") not in judges:
                    judges.append(record.get("judge"))
    if len(judges) > 1:
        raise SamiInputError(f"{ev.files.root}: the judgments were given by {len(judges)} different judges")
    mi_records = [r for r in mi_store.records if str(r["id"]) in ids]

    def part(subset_queries: list[Query]) -> dict:
        """Intrinsic metrics, win rates and adherence of some of the queries."""
        from sami.evaluation.metrics import aggregate_scores

        sub_ids = {q.id for q in subset_queries}
        intrinsic: dict = {}
        if settings.intrinsic:
            per_query = {k: v for k, v in (scores.get("intrinsic") or {}).items() if k in sub_ids}
            records = [r for r in mi_records if str(r["id"]) in per_query]
            if records:
                intrinsic = aggregate_scores(per_query, records)
        win_rates = {
            name: summarize([r for r in records if str(r["id"]) in sub_ids], seed=settings.seed)
            for name, records in judgments.items()
        }
        adherence_ = None
        if anti_store is not None:
            adherence_ = eval_adherence(subset_queries, ev.positive, responses, anti_store)
        return {
            "n_queries": len(subset_queries),
            "mi": intrinsic.get("mi"),
            "mi_sem": intrinsic.get("mi_sem"),
            "mi_bound": intrinsic.get("mi_bound"),
            "sami_loss": intrinsic.get("sami_loss"),
            "accuracy": intrinsic.get("accuracy"),
            "mean_length": intrinsic.get("mean_length") or {},
            "mean_length_tokens": intrinsic.get("mean_length_tokens") or {},
            "win_rates": win_rates,
            "adherence": adherence_,
        }

    pooled = part(queries)
    contrast_ = None
    if contrast_store is not None:
        contrast_ = contrast_metrics(
            ev.contrast_queries, ev.positive, responses, contrast_store, ev.principles,
            scores=scores.get("contrast") or {},
        )  # fmt: skip
    by_subset: dict[str, list[Query]] = {}
    for q in queries:
        by_subset.setdefault(query_subset(q), []).append(q)
    subsets = {}
    if len(by_subset) >= 2:
        for name in sorted(by_subset):
            entry = part(by_subset[name])
            subsets[name] = {k: entry[k] for k in SUBSET_KEYS}
    from sami.evaluation.metrics import aggregate_scores

    baselines_ = {}
    for name in ev.baselines:
        per_query = {k: v for k, v in ((scores.get("baselines") or {}).get(name) or {}).items() if k in ids}
        path = ev.files.baseline_mi_responses(name)
        records = [r for r in read_jsonl(path) if str(r["id"]) in per_query] if path.is_file() else []
        if records:
            agg = aggregate_scores(per_query, records)
            baselines_[name] = {k: agg[k] for k in ("mi", "mi_sem", "mean_length", "mean_length_tokens")}
    metrics = {
        "model": ev.label,
        "model_ref": ev.model_ref,
        "n_queries": len(queries),
        "n_constitutions": _n_constitutions(ev),
        "mi_kind": settings.mi,
        "n_sign_patterns": _n_constitutions(ev) if settings.mi == "sign_patterns" else None,
        "mi_sampled": ev.mi_sampled if settings.mi == "sign_patterns" else None,
        "mi_eos": _eos_policy(settings),
        **{k: pooled[k] for k in ("mi", "mi_sem", "mi_bound", "sami_loss", "accuracy")},
        "mean_length": pooled["mean_length"],
        "mean_length_tokens": pooled["mean_length_tokens"],
        "win_rates": pooled["win_rates"],
        "judge": judges[0] if judges else None,
        "adherence": pooled["adherence"],
        "contrast": contrast_,
        "baselines": baselines_,
        "subsets": subsets,
    }
    atomic_write_json(ev.files.metrics, metrics)
    return metrics


# ---- antithesis responses, adherence and the contrast check -------------------------------------------


def _intrinsic(model, tokenizer, records, template, settings) -> dict:
    """MI, InfoNCE bound and lengths of MI response records, scored with the evaluation's EOS policy."""
    from sami.evaluation.metrics import intrinsic_metrics

    return intrinsic_metrics(
        model,
        tokenizer,
        records,
        template=template,
        batch_size=settings.batch_size,
        eos=_eos_policy(settings),
    )
