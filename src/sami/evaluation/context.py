"""What the evaluation's steps share: the caller's inputs (`EvaluationInputs`), resolved once by `prepare` into an
`Evaluation` (queries, the constitutions of each query, prompts, baselines, the output files and the lazily loaded
evaluated model), and the helpers over it (the JSONL stores, the MI constitutions, token counts)."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sami import models  # models.load_model, looked up at call time (tests patch it)
from sami.constitutions import Constitution, ConstitutionSet, load_constitutions, sample_constitutions
from sami.data import Query, load_queries
from sami.errors import SamiInputError
from sami.evaluation.devices import device_for, free_memory
from sami.evaluation.metrics import response_lengths
from sami.evaluation.settings import TASKS, BaselineSettings, EvaluationSettings, as_baseline
from sami.evaluation.templates import choose_template
from sami.io import JsonlStore
from sami.layout import EvalLayout
from sami.prompts import PromptTemplate

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class EvaluationInputs:
    """The inputs of one evaluation besides its settings (all optional; see `sami.evaluation.run_evaluation`).

    - `queries`/`cset`: the evaluation queries and the `ConstitutionSet` (default: loaded from `settings.queries`
      and `settings.constitutions`); `template`: a `PromptTemplate` (default: the built-in one for the task/style).
    - `model`/`tokenizer`: the evaluated model already loaded (else loaded from the model reference when a step
      needs it); `model_label` names it in the records (default: the model reference).
    - `baselines`: name -> model reference or `BaselineSettings` (default `settings.baselines`);
      `baseline_responses`: name -> {query_id: response} already generated (e.g. iteration 0's base responses),
      used instead of generating; missing ids are generated. `baseline_evals`: name -> an evaluation folder of
      that baseline as the evaluated model under the same settings (in a run: iter-0/eval for "base"); its
      responses under the MI constitutions and their scores are taken from there instead of loading the model.
      `baseline_dirs`: name -> the folder where that baseline's own stage wrote its responses (side = name), MI
      responses and scores (a run's `baselines/NAME/`): the judgments and metrics steps read them there, and the
      responses step neither generates nor copies them.
    - `judge=False`: no baselines and no judgments step; `judge_model`/`judge_tokenizer`: a loaded local judge.
    - `contrast=True`: the contrast check (`sami.evaluation.contrast.contrast_metrics`).
    - `base_model`: the model a server's configured `model_name` serves (a run's π₀); with
      `evaluation.generation.backend: openai`, another evaluated model must be listed by the server
      (`sami.evaluation.engine`). None: the evaluated model itself (the server serves it as configured).
    """

    queries: Sequence[Query] | None = None
    cset: ConstitutionSet | None = None
    template: PromptTemplate | None = None
    model: Any = None
    tokenizer: Any = None
    model_label: str | None = None
    baselines: dict[str, str | BaselineSettings] | None = None
    baseline_responses: dict[str, dict[str, str]] = field(default_factory=dict)
    baseline_evals: dict[str, str | Path] = field(default_factory=dict)
    reused_baselines: dict[str, str | Path] = field(default_factory=dict)
    baseline_dirs: dict[str, str | Path] = field(default_factory=dict)
    judge: bool = True
    judge_model: Any = None
    judge_tokenizer: Any = None
    trust_remote_code: bool = False
    attn_implementation: str = "sdpa"
    contrast: bool = False
    base_model: str | None = None


@dataclass
class Evaluation:
    """The resolved inputs of one evaluation and the lazily loaded evaluated model/tokenizer."""

    settings: EvaluationSettings
    model_ref: str
    label: str
    queries: list[Query]
    cset: ConstitutionSet
    task: str
    template: PromptTemplate
    positive: dict[str, Constitution]
    constitutions: dict[str, list[Constitution]]
    mi_constitutions: dict[str, list[Constitution]]  # the constitutions of each mi_responses.jsonl record, in order
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
    base_model: str | None = None
    baseline_dirs: dict[str, Path] = field(default_factory=dict)  # baselines written by a stage of their own

    def baseline_files(self, name: str) -> EvalLayout:
        """Where baseline `name`'s responses, MI responses and scores are: its own folder (`baseline_dirs`) or
        this evaluation's."""
        folder = self.baseline_dirs.get(name)
        return self.files if folder is None else EvalLayout(folder)

    def get_tokenizer(self):
        if self.tokenizer is None:
            self.tokenizer = models.load_tokenizer(self.model_ref, trust_remote_code=self.trust_remote_code)
        return self.tokenizer

    def get_model(self):
        if self.model is None:
            dm = self.settings.device_map  # passed only when set (spread over devices: then no `device`)
            self.model = models.load_model(
                self.model_ref, dtype=self.settings.dtype, trust_remote_code=self.trust_remote_code,
                attn_implementation=self.attn_implementation,
                **({"device_map": dm} if dm else {"device": device_for(self.settings)}),
            )  # fmt: skip
            self.model.eval()
            self.loaded_here = True
        return self.model

    def release(self) -> None:
        if self.loaded_here and self.model is not None:
            self.model = None
            free_memory()

    def count_tokens(self, text: str) -> int:
        """Length of one response in tokens of the evaluated model's tokenizer (`response_lengths`)."""
        return response_lengths(self.get_tokenizer(), [text])[0]

    def n_constitutions(self) -> int | list[int]:
        """Constitutions per query of the intrinsic metrics (one number, or the sorted distinct counts)."""
        sizes = sorted({len(cs) for cs in self.mi_constitutions.values()})
        return sizes[0] if len(sizes) == 1 else sizes

    def stores(self) -> tuple[JsonlStore, JsonlStore, JsonlStore | None, JsonlStore | None]:
        """responses, mi_responses, antithesis_responses (when adherence is measured), contrast_responses."""
        files = self.files
        checkable = self.settings.adherence and self.cset.checkable
        return (
            JsonlStore(files.responses),
            JsonlStore(files.mi_responses),
            JsonlStore(files.antithesis_responses) if checkable else None,
            JsonlStore(files.contrast_responses) if self.principles else None,
        )


def query_constitutions(cset, queries: Sequence[Query], settings: EvaluationSettings) -> dict[str, list]:
    """The C constitutions of each query (first = the positive one), seeded by `settings.seed` and the query id."""
    scheme = settings.scheme or "uniform"
    n = settings.n_constitutions or 2
    out = {}
    for q in queries:
        rng = random.Random(f"{settings.seed}:{q.id}")
        out[q.id] = sample_constitutions(cset, scheme, n, rng, query=q, mode=settings.mode)
    return out


def sign_patterns(positive, cap: int = 16, seed: int = 0) -> tuple[list, bool]:
    """Every sign pattern of `positive`'s principles (2^k constitutions, `positive` first, then in binary order of
    the flipped principles), or, when 2^k > `cap`, `positive` and a sample of `cap − 1` others seeded by `seed`
    and k only (the same patterns for every query with k principles). Returns `(constitutions, sampled)`."""
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


def _queries(settings: EvaluationSettings, queries: Sequence[Query] | None) -> list[Query]:
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
    return queries


def prepare(settings: EvaluationSettings, model_ref: str, out_dir: str | Path, inputs: EvaluationInputs) -> Evaluation:
    """Resolve the inputs every step needs (queries, constitutions, prompts, baselines); loads no model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = {} if not inputs.judge else settings.baselines if inputs.baselines is None else inputs.baselines
    resolved = {name: as_baseline(spec) for name, spec in specs.items()}
    for name in resolved:
        if name == "model" or not _NAME.match(name):
            raise SamiInputError(f"baselines: bad name {name!r} (use letters, digits, '_', '-', '.'; not 'model')")
    queries = _queries(settings, inputs.queries)
    cset = inputs.cset
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
    return Evaluation(
        settings=settings,
        model_ref=str(model_ref),
        label=inputs.model_label or str(model_ref),
        queries=queries,
        cset=cset,
        task=task,
        template=choose_template(task, settings.style, inputs.template),
        positive={qid: cs[0] for qid, cs in constitutions.items()},
        constitutions=constitutions,
        mi_constitutions=mi_constitutions,
        mi_sampled=sampled,
        files=EvalLayout(out_dir),
        baselines=resolved,
        principles=[p.name for p in cset.pool(settings.mode)] if inputs.contrast else [],
        contrast_queries=queries[: settings.contrast_limit] if settings.contrast_limit else queries,
        trust_remote_code=inputs.trust_remote_code,
        attn_implementation=inputs.attn_implementation,
        model=inputs.model,
        tokenizer=inputs.tokenizer,
        base_model=None if inputs.base_model is None else str(inputs.base_model),
        baseline_dirs={name: Path(d) for name, d in inputs.baseline_dirs.items() if name in resolved},
    )


def check_mi_store(ev: Evaluation, mi_store: JsonlStore) -> None:
    """mi_responses.jsonl must hold the constitutions this evaluation scores (the MI kind and C did not change)."""
    for r in mi_store.records:
        expected = ev.mi_constitutions.get(str(r["id"]))
        if expected is None:
            continue
        if [Constitution.from_dict(c).label() for c in r["constitutions"]] != [c.label() for c in expected]:
            raise SamiInputError(
                f"{ev.files.mi_responses}: query {r['id']} was written under other constitutions than evaluation.mi "
                f"= {ev.settings.mi!r} draws (the MI kind, C or scheme changed); evaluate into another folder"
            )
