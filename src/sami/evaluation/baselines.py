"""The baselines' part of the responses step: their responses under the positive constitutions (given ones first,
the rest generated, one baseline model loaded at a time), their prompts, and, for an hf baseline, its responses
under the MI constitutions and their scores (copied from the baseline's own evaluation where it has them).
A baseline written by a stage of its own (a run's `baselines/NAME/`, `Evaluation.baseline_dirs`) is skipped here:
the judgments and metrics steps read it in its folder."""

from __future__ import annotations

import logging
from pathlib import Path

from sami import models  # models.load_model, looked up at call time (tests patch it)
from sami.errors import SamiInputError
from sami.evaluation.context import Evaluation
from sami.evaluation.devices import device_for, free_memory
from sami.evaluation.responses import Progress, generate_patterns, generate_side
from sami.evaluation.scores import ScoresFile, intrinsic_scores
from sami.evaluation.settings import BaselineSettings
from sami.evaluation.templates import choose_template, user_turn_template
from sami.generation import (  # factory.make_generator: looked up at call time (tests patch it)
    GenerationSettings,
    factory,
)
from sami.io import JsonlStore, read_jsonl
from sami.layout import EvalLayout
from sami.prompts import PromptTemplate

log = logging.getLogger(__name__)


def load_side_responses(path: str | Path, side: str = "model") -> dict[str, str]:
    """`{query_id: response}` of one side of a `responses.jsonl` (e.g. iteration 0's base-model responses)."""
    return {
        str(r["query_id"]): str(r["response"])
        for r in read_jsonl(path)
        if r.get("side") == side and "query_id" in r and "response" in r
    }


def baseline_template(ev: Evaluation, spec: BaselineSettings, tokenizer=None) -> PromptTemplate:
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
    return choose_template(ev.task, style, ev.template)


def reuse_intrinsic(ev: Evaluation, name: str, source: EvalLayout, *, as_baseline: bool = False) -> None:
    """Copy a baseline's responses under the MI constitutions and their scores from `source`, the baseline's own
    evaluation under the same settings (`as_baseline`: an evaluation where it was the baseline `name`), for the
    queries whose constitutions match there (the rest are generated)."""
    theirs = ScoresFile(source.scores)
    if not theirs.matches(ev.settings):
        return
    store = JsonlStore(ev.files.baseline_mi_responses(name))
    wanted = {q.id: [c.to_dict() for c in ev.mi_constitutions[q.id]] for q in ev.queries if q.id not in store}
    scores = theirs.read()
    intrinsic = scores.baselines.get(name, {}) if as_baseline else scores.intrinsic
    mi_path = source.baseline_mi_responses(name) if as_baseline else source.mi_responses
    copied = {}
    for record in read_jsonl(mi_path) if mi_path.is_file() else []:
        qid = str(record.get("id"))
        if qid in wanted and qid in intrinsic and record.get("constitutions") == wanted[qid]:
            store.add(record)
            copied[qid] = intrinsic[qid]
    if copied:
        store.flush()
        ScoresFile(ev.files.scores).add_baseline(name, copied)


def copy_responses(responses: JsonlStore, name: str, source: EvalLayout, query_ids: set[str]) -> None:
    """Copy baseline `name`'s responses from `source` (an evaluation where it was a baseline under the same
    settings: the same model, prompts and constitutions), record for record, for the queries still missing."""
    if not source.responses.is_file():
        return
    for record in read_jsonl(source.responses):
        if record.get("side") == name and str(record.get("query_id")) in query_ids and record["id"] not in responses:
            responses.add(record)
    responses.flush()


def _add_given(ev: Evaluation, responses: JsonlStore, name: str, spec: BaselineSettings, given: dict[str, str]):
    """The responses of baseline `name` given by the caller (e.g. iteration 0's), for the queries still missing."""
    for q in ev.queries:
        if f"{name}:{q.id}" not in responses and q.id in given:
            responses.add(
                {
                    "id": f"{name}:{q.id}",
                    "query_id": q.id,
                    "side": name,
                    "model": spec.model,
                    "query": q.query,
                    "constitution": ev.positive[q.id].to_dict(),
                    "response": given[q.id],
                    "num_tokens": ev.count_tokens(given[q.id]),
                }
            )
    responses.flush()


def baseline_responses(
    ev: Evaluation,
    responses: JsonlStore,
    given: dict[str, dict[str, str]],
    gen_settings: GenerationSettings,
    progress: Progress,
    baseline_evals: dict[str, str | Path],
    reused: dict[str, str | Path],
) -> None:
    """The baselines' responses: `given` ones first, the rest generated (one baseline model at a time); with
    `baseline_intrinsic`, an hf baseline's responses under the MI constitutions and their scores too (taken from
    `baseline_evals[name]` where that folder has them). A baseline in `reused` (e.g. an instruct model at iteration
    t, whose prompts and model never change within a run) is copied from that folder first: generated once per
    run."""
    settings, queries, positive = ev.settings, ev.queries, ev.positive
    scores_file = ScoresFile(ev.files.scores)
    for name, spec in ev.baselines.items():
        if name in ev.baseline_dirs:
            continue  # written once per run by its own stage, read there
        if name in reused:
            copy_responses(responses, name, EvalLayout(Path(reused[name])), {q.id for q in queries})
        _add_given(ev, responses, name, spec, given.get(name, {}))
        gen = spec.generation or gen_settings.model_copy(
            update={"model": spec.model, "device": device_for(settings), "trust_remote_code": ev.trust_remote_code}
        )
        todo = [q for q in queries if f"{name}:{q.id}" not in responses]
        intrinsic = settings.intrinsic and settings.baseline_intrinsic
        if intrinsic and gen.backend != "hf":
            log.info("baseline %s: no MI or lengths under the MI constitutions (a %s model)", name, gen.backend)
            intrinsic = False
        if intrinsic and name in scores_file.read().baselines_skipped:
            intrinsic = False  # its model did not load before (see scores.json)
        if intrinsic and name in baseline_evals:
            reuse_intrinsic(ev, name, EvalLayout(Path(baseline_evals[name])))
        if intrinsic and name in reused:
            reuse_intrinsic(ev, name, EvalLayout(Path(reused[name])), as_baseline=True)
        mi_store = JsonlStore(ev.files.baseline_mi_responses(name)) if intrinsic else None
        mi_todo = [q for q in queries if q.id not in mi_store] if mi_store is not None else []
        done = scores_file.read().baselines.get(name) or {}
        unscored = [r for r in (mi_store.records if mi_store is not None else []) if str(r["id"]) not in done]
        if not todo and not mi_todo and not unscored:
            continue
        if gen.backend != "hf":
            advance = progress.task(f"responses of baseline {name}", len(todo))
            generate_side(
                responses, factory.make_generator(gen), baseline_template(ev, spec), todo, positive, side=name,
                label=spec.model, settings=settings, advance=advance,
            )  # fmt: skip
            continue
        try:
            tokenizer = models.load_tokenizer(gen.model, trust_remote_code=gen.trust_remote_code)
            model = models.load_model(
                gen.model, dtype=gen.dtype, device=gen.device, trust_remote_code=gen.trust_remote_code
            )
            model.eval()
        except (SamiInputError, OSError) as e:
            if todo:
                raise
            log.info("baseline %s: no MI or lengths (its model does not load here: %s)", name, e)
            scores_file.skip_baseline(name, f"{gen.model}: {e}")
            continue
        btemplate = baseline_template(ev, spec, tokenizer)
        generator = factory.make_generator(gen, model=model, tokenizer=tokenizer)
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
                per_query = intrinsic_scores(model, tokenizer, records, btemplate, settings)["per_query"]
                scores_file.add_baseline(name, per_query)
        generator = model = None
        free_memory()
