"""Verifiable checks on principles: IFEval's instruction ids, kwargs and semantics, decided by a program.

A principle may carry a `check` (and optionally an `antithesis_check`) in its constitution file:

    {"name": "brief", "principle": "Answer in one short sentence.", "antithesis": "...",
     "check": {"id": "length_constraints:number_sentences", "kwargs": {"num_sentences": 2, "relation": "less than"}}}

A check is `{"id": <instruction id>, "kwargs": {...}}` (IFEval's `instruction_id_list` / `kwargs` pair), or a list
of them that must all hold. By default the antithesis holds when the check fails.

Every one of IFEval's 25 instruction ids is supported, with IFEval's kwargs and semantics (Zhou et al. 2023,
`instructions.py`; "less than" is `<`, "at least" is `>=`): the registry, the checkers and the offline counting
(punkt sentences, NLTK word tokens, langdetect) live in `sami.ifeval`, whose docstrings say why it is our own
code and which offline equivalents replace NLTK's downloaded punkt data. Ids used by the bundled constitutions:
`length_constraints:number_sentences` (`num_sentences`, `relation`), `punctuation:no_comma`, and in
`checkable_library` most of the others (see `docs/principles.md`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sami.errors import SamiInputError
from sami.ifeval.instructions import REGISTRY, RELATIONS, follows, parse_kwargs
from sami.ifeval.text import count_sentences, count_words, split_into_sentences

__all__ = [
    "RELATIONS", "REGISTRY", "Check", "CheckSet", "count_sentences", "count_words", "parse_check", "parse_check_set",
    "satisfied", "split_into_sentences",
]  # fmt: skip


@dataclass(frozen=True)
class Check:
    """One verifiable instruction: an IFEval id and its kwargs. `check(response)` says whether it holds."""

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def __call__(self, response: str) -> bool:
        return follows(self.id, self.kwargs, response)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kwargs": dict(self.kwargs)}


@dataclass(frozen=True)
class CheckSet:
    """One or more checks that must all hold (the `check` / `antithesis_check` field of a principle)."""

    checks: tuple[Check, ...]

    def __call__(self, response: str) -> bool:
        return all(c(response) for c in self.checks)

    def to_json(self) -> dict[str, Any] | list[dict[str, Any]]:
        """The file form: one mapping for a single check, else a list."""
        return self.checks[0].to_dict() if len(self.checks) == 1 else [c.to_dict() for c in self.checks]

    def describe(self) -> str:
        return " and ".join(f"{c.id}({', '.join(f'{k}={v!r}' for k, v in c.kwargs.items())})" for c in self.checks)


def parse_check(raw: Any, where: str = "check") -> Check:
    """One check from `{"id": ..., "kwargs": {...}}`; raises `SamiInputError` naming `where` when it is wrong."""
    if not isinstance(raw, dict):
        raise SamiInputError(f"{where}: expected a mapping with 'id' and 'kwargs', got {raw!r}")
    extra = sorted(set(raw) - {"id", "kwargs"})
    if extra:
        raise SamiInputError(f"{where}: unknown field(s) {extra}; a check is {{id, kwargs}}")
    cid = raw.get("id")
    if cid not in REGISTRY:
        raise SamiInputError(f"{where}: unknown check id {cid!r}; supported: {', '.join(REGISTRY)}")
    return Check(cid, parse_kwargs(cid, raw.get("kwargs"), where))


def parse_check_set(raw: Any, where: str = "check") -> CheckSet:
    """A `check` field: one check mapping or a non-empty list of them (all must hold)."""
    if isinstance(raw, list):
        if not raw:
            raise SamiInputError(f"{where}: empty list of checks (leave the field out instead)")
        return CheckSet(tuple(parse_check(x, f"{where}[{i}]") for i, x in enumerate(raw)))
    return CheckSet((parse_check(raw, where),))


def satisfied(checks: Sequence[Callable[[str], bool]], response: str) -> int:
    """How many of `checks` hold for `response`."""
    return sum(bool(c(response)) for c in checks)
