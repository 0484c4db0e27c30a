"""Pairwise judges: which of two responses follows the positive constitution better?

Three kinds, one protocol (Fränken et al., 2024, after the DPO/MT-Bench judging setups):

- `api`: any OpenAI-compatible chat endpoint (GPT-4-class models, a vLLM or llama.cpp server). The judge sees the
  query, the positive constitution (principle order shuffled per item, seeded), responses A and B, writes a short
  comparison (≤ 100 words) and then a final line "A" or "B". Temperature 0. The verdict is parsed from the answer;
  an answer naming both letters or neither is "unparsed", a request that fails is "failed" (both count 0.5).
- `local`: an HF model (default: the bundled instruct model). One forward pass over the judge prompt (chat template
  when the tokenizer has one) and the next-token probabilities of "A" and "B": `P(A) / (P(A) + P(B))`. No sampling.
- `rules`: no model. The checks of the positive constitution's principles (`sami.checks`, IFEval's verifiable
  instructions) decide: the response that satisfies more of them wins, an equal count is a tie (0.5). Needs at
  least one principle with a `check`; order plays no part.

Position bias: by default each item's order (model first or baseline first) is drawn from a seeded RNG. With
`both_orders=True` both orders are judged and averaged: for the `api` judge two agreeing verdicts decide and a
disagreement is a tie (MT-Bench); for the `local` judge the two probabilities are averaged, which makes it
order-symmetric. A tie is `|P(model wins) − 0.5| < tie_band`.
"""

from __future__ import annotations

import logging
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from sami.errors import SamiInputError
from sami.evaluation.judge_prompts import judge_prompt
from sami.evaluation.judge_settings import ApiJudgeSettings, JudgeSettings, LocalJudgeSettings
from sami.evaluation.verdicts import parse_verdict
from sami.models import accepts_logits_to_keep, left_pad, load_model, load_tokenizer
from sami.openai_client import ApiError, OpenAIClient
from sami.prompts import render_prompt

log = logging.getLogger(__name__)


@dataclass
class PairItem:
    """One comparison: the evaluated model's response against the baseline's on the same query."""

    id: str
    query: str
    constitution: object  # sami.constitutions.Constitution (the positive one)
    model_response: str
    baseline_response: str
    model_length: int = 0  # characters (AlpacaEval's unit; the length-controlled win rate reads these)
    baseline_length: int = 0
    model_length_tokens: int | None = None  # tokens of the evaluated model's tokenizer
    baseline_length_tokens: int | None = None
    subset: str = "all"  # the query's subset (e.g. "helpful" / "harmless")


@dataclass
class Verdict:
    """One judge call on one ordered pair: `p_a` = probability that A is better (api: 1.0, 0.0 or None)."""

    p_a: float | None
    status: Literal["ok", "unparsed", "failed"]
    text: str


@dataclass
class Preference:
    """One item's judgment: `p_model` = P(the model's response is better), averaged over the judged orders."""

    p_model: float | None  # None when unparsed or failed
    status: Literal["ok", "tie", "unparsed", "failed"]
    order: Literal["model_first", "baseline_first", "both"]
    text: str


# ---- parsing -------------------------------------------------------------------------------------------
# ---- judges --------------------------------------------------------------------------------------------
class PairwiseJudge(ABC):
    """Base class: order handling, combination of orders and judgment records; subclasses score ordered pairs."""

    def __init__(self, settings: JudgeSettings):
        self.settings = settings

    @property
    def template(self) -> str:
        """The prompt template filled for each pair (the settings' `prompt_text()`)."""
        return self.settings.prompt_text() or ""

    @abstractmethod
    def compare(self, prompts: list[str]) -> list[Verdict]:
        """Score filled judge prompts (each with an A and a B response); one verdict per prompt, same order."""

    def prompts_for(self, item: PairItem, *, task: str = "dialogue") -> list[tuple[bool, str]]:
        """The `(model_first, filled prompt)` pairs judged for `item`: both orders, or one drawn at random.

        The principle shuffle and the order come from an RNG seeded by `settings.seed` and the item id only, so
        they are the same whichever other items are judged with it (resuming changes nothing).
        """
        rng = random.Random(f"{self.settings.seed}:{item.id}")
        constitution_text = item.constitution.shuffled(rng).render()
        orders = [True, False] if self.settings.both_orders else [rng.random() < 0.5]
        out = []
        for model_first in orders:
            a, b = (item.model_response, item.baseline_response)
            if not model_first:
                a, b = b, a
            out.append((model_first, judge_prompt(self.template, task, constitution_text, item.query, a, b)))
        return out

    def messages(self, prompt: str) -> list[dict]:
        """The chat messages of one filled judge prompt: the system message (`settings.system`, if any), then the
        prompt as the user turn."""
        system = self.settings.system
        return [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": prompt}]

    def preferences(self, items: Sequence[PairItem], *, task: str = "dialogue") -> list[Preference]:
        """Judge `items` (each in one seeded order, or both); one `Preference` per item, same order."""
        prompts: list[str] = []
        plans: list[list[bool]] = []  # per item: model_first for each judged order
        for item in items:
            planned = self.prompts_for(item, task=task)
            plans.append([model_first for model_first, _ in planned])
            prompts.extend(prompt for _, prompt in planned)
        verdicts = self.compare(prompts)
        out, k = [], 0
        for orders in plans:
            out.append(self._combine(orders, verdicts[k : k + len(orders)]))
            k += len(orders)
        return out

    def _combine(self, orders: list[bool], verdicts: list[Verdict]) -> Preference:
        statuses = {v.status for v in verdicts}
        order = "both" if len(orders) == 2 else ("model_first" if orders[0] else "baseline_first")
        texts = [self._describe(v, first) for v, first in zip(verdicts, orders, strict=True)]
        text = "\n\n".join(texts)
        if "failed" in statuses or "unparsed" in statuses:
            return Preference(None, "failed" if "failed" in statuses else "unparsed", order, text)
        p_each = [v.p_a if first else 1.0 - v.p_a for v, first in zip(verdicts, orders, strict=True)]
        p_model = sum(p_each) / len(p_each)
        tie = abs(p_model - 0.5) < self.settings.tie_band or p_model == 0.5
        return Preference(p_model, "tie" if tie else "ok", order, text)

    def judge(self, items: Sequence[PairItem], *, model: str, baseline: str, task: str = "dialogue") -> list[dict]:
        """Judge `items` into judgment records (the format of judgments-<baseline>.jsonl), `win` from the model's side.

        `model` and `baseline` are the labels written into the records; `task` ("dialogue" | "summarization")
        words the judge's question.
        """
        records = []
        for item, pref in zip(items, self.preferences(items, task=task), strict=True):
            if pref.status == "ok":
                win: float = 1 if pref.p_model > 0.5 else 0
            else:
                win = 0.5
            records.append(
                self.record(item, model, baseline, win, order=pref.order, status=pref.status, text=pref.text)
            )
        return records

    def record(
        self, item: PairItem, model: str, baseline: str, win: float, *, order: str, status: str, text: str
    ) -> dict:
        """One judgments-file record for `item`, naming this judge."""
        return {
            "id": item.id,
            "model": model,
            "baseline": baseline,
            "win": win,
            "subset": item.subset,
            "model_length": int(item.model_length),
            "baseline_length": int(item.baseline_length),
            "model_length_tokens": item.model_length_tokens,
            "baseline_length_tokens": item.baseline_length_tokens,
            "order": order,
            "status": status,
            "judge_text": text,
            "judge": self.describe(),
        }

    def describe(self) -> dict:
        """The `judge` object of every judgment record: the settings' `identity()`."""
        return self.settings.identity()

    def _describe(self, verdict: Verdict, model_first: bool) -> str:
        who = "A = model, B = baseline" if model_first else "A = baseline, B = model"
        return f"[{who}] {verdict.text}".strip()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (a loaded model, an HTTP client)."""


class ApiJudge(PairwiseJudge):
    """A judge model behind an OpenAI-compatible chat completions endpoint, through `sami.openai_client` (the
    client the `openai` generation backend uses: retries with backoff and Retry-After, the key only from
    `api_key_env`, none needed on a loopback `base_url`, at most `max_concurrency` requests in flight)."""

    def __init__(self, settings: ApiJudgeSettings, client=None):
        super().__init__(settings)
        if not settings.model_name:
            raise SamiInputError("judge.model_name: the api judge needs the model name at the endpoint")
        if client is None:
            client = OpenAIClient.from_endpoint(settings, field="judge")
        self.client = client

    def _one(self, prompt: str) -> Verdict:
        try:
            text, _ = self.client.chat(
                self.messages(prompt),
                model=self.settings.model_name,
                max_tokens=self.settings.max_tokens,
                temperature=self.settings.temperature,
                seed=self.settings.seed,
            )
        except ApiError as e:  # recorded as a failed verdict (counted 0.5 and reported), not raised
            log.warning("judge request failed: %s", e)
            return Verdict(p_a=None, status="failed", text=f"error: {e}")
        choice = parse_verdict(text)
        if choice is None:
            return Verdict(p_a=None, status="unparsed", text=text)
        return Verdict(p_a=1.0 if choice == "A" else 0.0, status="ok", text=text)

    def compare(self, prompts: list[str]) -> list[Verdict]:
        return self.client.map(lambda prompt, _abort: self._one(prompt), prompts)

    def close(self) -> None:
        self.client.close()


def _letter_ids(tokenizer, letter: str) -> list[int]:
    """Token ids that spell `letter` as one token, with and without a leading space."""
    ids = set()
    for variant in (letter, " " + letter):
        encoded = tokenizer(variant, add_special_tokens=False).input_ids
        if len(encoded) == 1:
            ids.add(encoded[0])
    if not ids:
        raise SamiInputError(f"judge.model: the tokenizer has no single token for {letter!r}")
    return sorted(ids)


class LocalJudge(PairwiseJudge):
    """Next-token probabilities of "A" vs "B" from an HF causal LM after the judge prompt."""

    def __init__(self, settings: LocalJudgeSettings, model=None, tokenizer=None):
        super().__init__(settings)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(settings.model)
        self.model = model if model is not None else load_model(settings.model, dtype=settings.dtype).eval()
        self.a_ids = _letter_ids(self.tokenizer, "A")
        self.b_ids = _letter_ids(self.tokenizer, "B")

    def render(self, prompt: str) -> str:
        """The judge prompt as the model sees it: the chat template (with the generation prompt) when there is one."""
        if getattr(self.tokenizer, "chat_template", None):
            return render_prompt(self.messages(prompt), self.tokenizer)
        return prompt + "\nAnswer:"

    def probabilities(self, prompts: list[str]) -> list[float]:
        """P(A) / (P(A) + P(B)) for each filled judge prompt."""
        texts = [self.render(p) for p in prompts]
        encoded = [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
        bos = self.tokenizer.bos_token_id
        if bos is not None and getattr(self.tokenizer, "add_bos_token", False):
            encoded = [ids if ids[:1] == [bos] else [bos, *ids] for ids in encoded]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = next(self.model.parameters()).device
        keep = {"logits_to_keep": 1} if accepts_logits_to_keep(self.model) else {}
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[float] = [math.nan] * len(encoded)
        bs = self.settings.batch_size
        with torch.no_grad():
            for start in range(0, len(order), bs):
                batch = order[start : start + bs]
                ids, mask = left_pad([encoded[i] for i in batch], pad)  # the last position is every prompt's end
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), **keep
                ).logits[:, -1, :]
                logp = torch.log_softmax(logits.float(), dim=-1)
                log_a = torch.logsumexp(logp[:, self.a_ids], dim=-1)
                log_b = torch.logsumexp(logp[:, self.b_ids], dim=-1)
                p_a = torch.sigmoid(log_a - log_b)
                for row, i in enumerate(batch):
                    out[i] = float(p_a[row])
        return out

    def compare(self, prompts: list[str]) -> list[Verdict]:
        probabilities = self.probabilities(prompts)
        return [Verdict(p_a=p, status="ok", text=f"P(A)={p:.4f} P(B)={1 - p:.4f}") for p in probabilities]

    def close(self) -> None:
        self.model = None


def rule_score(constitution, response: str) -> tuple[int, list[str]]:
    """How many checkable principles of `constitution` (each in its form there) `response` satisfies, and their
    names."""
    names = [p.name for p, positive in constitution.items if p.holds(response, positive)]
    return len(names), names


class RulesJudge(PairwiseJudge):
    """Verdicts from the positive constitution's checks: more principles satisfied wins, equal is a tie."""

    def compare(self, prompts: list[str]) -> list[Verdict]:  # pragma: no cover - judge() does not use prompts
        raise NotImplementedError("the rules judge scores responses, not prompts")

    def judge(self, items: Sequence[PairItem], *, model: str, baseline: str, task: str = "dialogue") -> list[dict]:
        records = []
        for item in items:
            checkable = [p.name for p, _ in item.constitution.items if p.checkable]
            if not checkable:
                raise SamiInputError(
                    "evaluation.judge.kind 'rules': the positive constitution has no principle with a `check`"
                )
            mine, mine_names = rule_score(item.constitution, item.model_response)
            theirs, their_names = rule_score(item.constitution, item.baseline_response)
            win: float = 1 if mine > theirs else 0 if mine < theirs else 0.5
            n = len(checkable)
            text = f"model satisfies {mine}/{n} {mine_names}; baseline {theirs}/{n} {their_names}"
            records.append(
                self.record(item, model, baseline, win, order="both", status="tie" if win == 0.5 else "ok", text=text)
            )
        return records


def make_judge(settings: JudgeSettings, *, model=None, tokenizer=None, client=None) -> PairwiseJudge:
    """Build the judge `settings` describe; a loaded `model`/`tokenizer` (local) or `client` (api) is reused."""
    if settings.kind == "rules":
        return RulesJudge(settings)
    if settings.kind == "api":
        return ApiJudge(settings, client=client)
    return LocalJudge(settings, model=model, tokenizer=tokenizer)
