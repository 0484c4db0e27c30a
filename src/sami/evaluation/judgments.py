"""The judgments step: one `judgments-<baseline>.jsonl` per baseline, one verdict per query whose two responses
exist, every record naming its judge (`JudgeSettings.identity()`); another judge's file is refused or moved
aside (`rejudge`), so verdicts of two judges never mix. Every record carries `pair_sha256`, a digest of the two
responses it judged: a verdict whose responses changed since (e.g. a baseline's own stage reran with other
settings) is judged again."""

from __future__ import annotations

import hashlib
import json
import logging
from functools import partial

from sami.errors import SamiInputError
from sami.evaluation.adherence import query_subset
from sami.evaluation.context import Evaluation
from sami.evaluation.judges import PairItem, make_judge
from sami.evaluation.responses import Progress
from sami.io import JsonlStore, read_jsonl
from sami.layout import EvalLayout

log = logging.getLogger(__name__)

RETRIED = ("failed", "unparsed")  # verdicts a rerun of the judgments step asks for again


def judge_hash(identity: dict) -> str:
    """8 hex digits naming a judge identity (the suffix of a judgments file kept aside)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:8]


def judgments_store(files: EvalLayout, baseline: str, identity: dict, *, rejudge: bool) -> JsonlStore:
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


def _stale(record: dict, *, ids: set[str], pairs: dict[str, str]) -> bool:
    """A verdict of an evaluated query whose two responses are not the ones it judged (older records carry no
    digest and are kept)."""
    qid = str(record["id"])
    return "pair_sha256" in record and qid in ids and record["pair_sha256"] != pairs.get(qid)


def pair_digest(mine: str, theirs: str) -> str:
    """16 hex digits naming the two responses of one verdict (the model's, then the baseline's)."""
    return hashlib.sha256(json.dumps([mine, theirs]).encode("utf-8")).hexdigest()[:16]


def _pair(ev: Evaluation, q, mine: str, theirs: str) -> PairItem:
    return PairItem(
        id=q.id,
        query=q.query,
        constitution=ev.positive[q.id],
        model_response=mine,
        baseline_response=theirs,
        model_length=len(mine),
        baseline_length=len(theirs),
        model_length_tokens=ev.count_tokens(mine),
        baseline_length_tokens=ev.count_tokens(theirs),
        subset=query_subset(q),
    )


def judgments_step(
    ev: Evaluation, progress: Progress, *, judge_model=None, judge_tokenizer=None, rejudge: bool = False
) -> None:
    """One judgments file per baseline, judging the queries whose two responses exist; ids already judged are
    skipped."""
    by_id = {str(r["id"]): r for r in JsonlStore(ev.files.responses).records}
    for name in ev.baseline_dirs:  # baselines written by their own stage: their responses are in their folder
        theirs = ev.baseline_files(name).responses
        if theirs.is_file():
            by_id.update({str(r["id"]): r for r in read_jsonl(theirs) if r.get("side") == name})
    ids = {q.id for q in ev.queries}
    judge_obj = None
    identity = ev.settings.judge.identity()
    for name in ev.baselines:
        store = judgments_store(ev.files, name, identity, rejudge=rejudge)
        retried = store.drop(lambda r: r.get("status") in RETRIED)  # failed requests and unparsed answers
        if retried:
            log.info("%s: judging %d failed or unparsed verdicts again", store.path.name, retried)
        pairs = {
            q.id: pair_digest(by_id[f"model:{q.id}"]["response"], by_id[f"{name}:{q.id}"]["response"])
            for q in ev.queries
            if f"model:{q.id}" in by_id and f"{name}:{q.id}" in by_id
        }
        stale = store.drop(partial(_stale, ids=ids, pairs=pairs))
        if stale:
            log.info("%s: judging %d verdicts again (their responses changed)", store.path.name, stale)
        pending = [
            q for q in ev.queries if q.id not in store and f"model:{q.id}" in by_id and f"{name}:{q.id}" in by_id
        ]
        if pending and judge_obj is None:
            judge_obj = make_judge(ev.settings.judge, model=judge_model, tokenizer=judge_tokenizer)
        advance = progress.task(f"judging vs {name}", len(pending))
        for start in range(0, len(pending), ev.settings.chunk_size):
            chunk = pending[start : start + ev.settings.chunk_size]
            items = [
                _pair(ev, q, by_id[f"model:{q.id}"]["response"], by_id[f"{name}:{q.id}"]["response"]) for q in chunk
            ]
            for record in judge_obj.judge(items, model=ev.label, baseline=name, task=ev.task):
                store.add({**record, "pair_sha256": pairs[str(record["id"])]})
            store.flush()
            advance(len(chunk))
        store.flush()
    if judge_obj is not None:
        judge_obj.close()
