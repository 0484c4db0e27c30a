"""Verifiable checks on principles: IFEval's instruction ids, kwargs and semantics, decided by a program.

A principle may carry a `check` (and optionally an `antithesis_check`) in its constitution file:

    {"name": "brief", "principle": "Answer in one short sentence.", "antithesis": "...",
     "check": {"id": "length_constraints:number_sentences", "kwargs": {"num_sentences": 2, "relation": "less than"}}}

A check is `{"id": <instruction id>, "kwargs": {...}}` (IFEval's `instruction_id_list` / `kwargs` pair), or a list
of them that must all hold. By default the antithesis holds when the check fails.

Supported ids (IFEval, Zhou et al. 2023, `instructions.py`; "less than" is `<`, "at least" is `>=`):

| id | kwargs | holds when |
|---|---|---|
| `length_constraints:number_sentences` | `num_sentences`, `relation` | sentence count `<` / `>=` N |
| `length_constraints:number_words` | `num_words`, `relation` | word count (`\\w+` tokens) `<` / `>=` N |
| `detectable_format:number_bullet_lists` | `num_bullets` | exactly N lines starting with `* ` or `-` |
| `change_case:english_lowercase` | – | the text is all lowercase (`str.islower()`) |
| `keywords:forbidden_words` | `forbidden_words` | none of the words occurs (whole word, any case) |
| `keywords:existence` | `keywords` | every keyword occurs (any case) |
| `startend:end_checker` | `end_phrase` | the text (stripped, quotes stripped, any case) ends with the phrase |
| `punctuation:no_comma` | – | no comma |
| `detectable_format:json_format` | – | the text (optionally in ``` fences) parses as JSON |
| `detectable_content:postscript` | `postscript_marker` | a line starts with the marker (P.S., P.P.S or other) |

Why our own registry rather than a maintained one: `if-verifiable` (PyPI) packages IFEval's registry, but it
imports `datasets`, `langdetect`, `syllapy`, `emoji` and NLTK, and its sentence counter loads NLTK's punkt data,
which is a download (`nltk.download`), not a package; this project runs offline and downloads nothing at run
time. The ten checkers above are a few lines each, so they are re-implemented here from IFEval's source
(Apache-2.0, google-research/instruction_following_eval) with the same ids, kwargs and comparisons. Two
documented differences: sentences are counted with IFEval's own regex splitter (`split_into_sentences`, which
IFEval uses for its key-sentence checker) instead of punkt, and `change_case:english_lowercase` does not run
`langdetect` (only the lowercase test).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sami.errors import SamiInputError

RELATIONS = ("less than", "at least")


# ---- counting, as IFEval's instructions_util --------------------------------------------------------
_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (
    r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|This\s|Wherever)"
)
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"
_MULTIPLE_DOTS = r"\.{2,}"


def split_into_sentences(text: str) -> list[str]:
    """IFEval's regex sentence splitter (`instructions_util.split_into_sentences`)."""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(_MULTIPLE_DOTS, lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    if "”" in text:
        text = text.replace(".”", "”.")
    if '"' in text:
        text = text.replace('."', '".')
    if "!" in text:
        text = text.replace('!"', '"!')
    if "?" in text:
        text = text.replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>").replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    return [s for s in sentences if s]


def count_sentences(text: str) -> int:
    """Number of sentences (IFEval's regex splitter; empty pieces are not sentences)."""
    return len(split_into_sentences(text))


def count_words(text: str) -> int:
    """Number of words: `\\w+` tokens, as IFEval's `count_words` (NLTK's `RegexpTokenizer(r"\\w+")`)."""
    return len(re.findall(r"\w+", text))


def _compare(value: int, threshold: int, relation: str) -> bool:
    return value < threshold if relation == "less than" else value >= threshold


# ---- the checkers --------------------------------------------------------------------------------------
def _number_sentences(text: str, *, num_sentences: int, relation: str) -> bool:
    return _compare(count_sentences(text), num_sentences, relation)


def _number_words(text: str, *, num_words: int, relation: str) -> bool:
    return _compare(count_words(text), num_words, relation)


def _number_bullet_lists(text: str, *, num_bullets: int) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def _english_lowercase(text: str) -> bool:
    return text.islower()


def _forbidden_words(text: str, *, forbidden_words: list[str]) -> bool:
    return not any(re.search(r"\b" + w + r"\b", text, flags=re.IGNORECASE) for w in forbidden_words)


def _existence(text: str, *, keywords: list[str]) -> bool:
    return all(re.search(k, text, flags=re.IGNORECASE) for k in keywords)


def _end_checker(text: str, *, end_phrase: str) -> bool:
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _no_comma(text: str) -> bool:
    return "," not in text


def _json_format(text: str) -> bool:
    value = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(prefix)
    value = value.removesuffix("```").strip()
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _postscript(text: str, *, postscript_marker: str) -> bool:
    value = text.lower()
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, value, flags=re.MULTILINE))


# id -> (function, {kwarg: kind}); kinds: "count" (int >= 0), "relation", "text", "words" (non-empty list)
REGISTRY: dict[str, tuple[Callable[..., bool], dict[str, str]]] = {
    "length_constraints:number_sentences": (_number_sentences, {"num_sentences": "count", "relation": "relation"}),
    "length_constraints:number_words": (_number_words, {"num_words": "count", "relation": "relation"}),
    "detectable_format:number_bullet_lists": (_number_bullet_lists, {"num_bullets": "count"}),
    "change_case:english_lowercase": (_english_lowercase, {}),
    "keywords:forbidden_words": (_forbidden_words, {"forbidden_words": "words"}),
    "keywords:existence": (_existence, {"keywords": "words"}),
    "startend:end_checker": (_end_checker, {"end_phrase": "text"}),
    "punctuation:no_comma": (_no_comma, {}),
    "detectable_format:json_format": (_json_format, {}),
    "detectable_content:postscript": (_postscript, {"postscript_marker": "text"}),
}


@dataclass(frozen=True)
class Check:
    """One verifiable instruction: an IFEval id and its kwargs. `check(response)` says whether it holds."""

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def __call__(self, response: str) -> bool:
        fn, _ = REGISTRY[self.id]
        return bool(fn(response, **self.kwargs))

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


def _kwarg(value: Any, kind: str, name: str, where: str) -> Any:
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SamiInputError(f"{where}: {name}: expected a non-negative integer, got {value!r}")
    elif kind == "relation":
        if value not in RELATIONS:
            raise SamiInputError(f"{where}: relation: expected 'less than' or 'at least', got {value!r}")
    elif kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise SamiInputError(f"{where}: {name}: expected a non-empty string, got {value!r}")
    elif kind == "words":
        if not (isinstance(value, list) and value and all(isinstance(w, str) and w.strip() for w in value)):
            raise SamiInputError(f"{where}: {name}: expected a non-empty list of strings, got {value!r}")
        value = list(value)
    return value


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
    kwargs = raw.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise SamiInputError(f"{where}: kwargs: expected a mapping, got {kwargs!r}")
    _, spec = REGISTRY[cid]
    unknown = sorted(set(kwargs) - set(spec))
    missing = sorted(set(spec) - set(kwargs))
    if unknown or missing:
        raise SamiInputError(
            f"{where}: {cid}: unknown kwarg(s) {unknown}, missing kwarg(s) {missing} (expects {sorted(spec)})"
        )
    return Check(cid, {k: _kwarg(kwargs[k], kind, k, f"{where}: {cid}") for k, kind in spec.items()})


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
