"""Principles, constitutions and the schemes that pick which constitutions to contrast for a query.

A *principle* has a name, a positive text and an *antithesis* (its opposite). A *constitution* is a short
numbered list of principles, each in its positive or antithesis form. For one query SAMI generates a
response under each of C constitutions and learns to tell them apart; a *sampling scheme* decides which C
constitutions those are. The first constitution a scheme returns is the "positive" one: the one evaluation
uses (its response is compared against the baseline under it).

Schemes (see `SCHEMES`):

- `uniform`: all principles of the pool; the all-positive pattern first, then n-1 other distinct sign
  patterns drawn uniformly at random. At most 2**k constitutions for k principles.
- `paper-dialogue`: the HH-RLHF pairs of the paper, from the principles named `helpful` and `harmless`
  (other principles of the set are ignored). Always (all-positive, one negative); the negative depends on
  `query.meta["subset"]`: for helpful-base queries `helpful` is negated and `harmless` is positive or
  negated at random; for harmless-base queries `harmless` is negated and `helpful` at random. Two
  negatives are never paired. At most 2.
- `paper-summarization`: the TL;DR pairs of the paper: (all positive, one of the other sign patterns
  uniformly), i.e. for concise/comprehensive one of not-concise, not-comprehensive or both negated. At most 2.
- `opposite`: the all-positive constitution against the all-antithesis one (every principle flipped), for
  principles that are meant to be learned together (e.g. the checkable demo set). At most 2.
- `diverse`: the diverse-principles experiment: draw 2 principles of the pool, flip each to its
  antithesis with probability 1/2 (the *drawn* constitution, returned first and used as "positive" for
  evaluation), and contrast it with its complement (every sign flipped). At most 2.

The *pool* of principles depends on `mode`: `train` uses `train_principles` when the set defines them
(else all), `eval` uses all principles, `heldout` uses `heldout_principles`. For in-distribution
evaluation of a set with train/held-out lists, sample with `mode="train"`; for held-out evaluation with
`mode="heldout"`. `paper-dialogue` always uses `helpful` and `harmless`.

Principle order is shuffled for every returned constitution independently (as the authors' code does),
with the given seeded `random.Random`, so a run is reproducible from its seed.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sami.checks import CheckSet, parse_check_set
from sami.data import Query
from sami.errors import SamiInputError
from sami.io import atomic_write_json, atomic_write_text, read_text

SchemeName = Literal["uniform", "paper-dialogue", "paper-summarization", "opposite", "diverse"]
Mode = Literal["train", "eval", "heldout"]

SCHEMES: dict[str, str] = {
    "uniform": "all-positive first, then n-1 other distinct sign patterns at random over the pool (max 2**k)",
    "paper-dialogue": "HH-RLHF pairs: (helpful+harmless, a negative chosen by the query's subset); max 2",
    "paper-summarization": "TL;DR pairs: (all positive, one other sign pattern at random); max 2",
    "opposite": "(all positive, all antithesis) over the pool; max 2",
    "diverse": "draw 2 principles with random signs, contrast with the complement (all signs flipped); max 2",
}
MODES: tuple[str, ...] = ("train", "eval", "heldout")
BUNDLED_CONSTITUTIONS: tuple[str, ...] = (
    "hh_opus", "tldr_mistral", "tldr_opus", "tldr_diverse_opus", "demo_checks", "checkable_library",
)  # fmt: skip

_SET_KEYS = {"task", "writer", "principles", "train_principles", "heldout_principles"}
_PRINCIPLE_KEYS = {"name", "principle", "antithesis"}
_CHECK_KEYS = {"check", "antithesis_check"}


@dataclass(frozen=True)
class Principle:
    """One principle: a short `name`, its positive text and its antithesis (the opposite principle).

    `check` (optional) is a program that decides whether a response follows the principle (`sami.checks`);
    the antithesis holds when the check fails, unless `antithesis_check` says otherwise.
    """

    name: str
    principle: str
    antithesis: str
    check: CheckSet | None = None
    antithesis_check: CheckSet | None = None

    def text(self, positive: bool = True) -> str:
        """The principle's text in the given form."""
        return self.principle if positive else self.antithesis

    @property
    def checkable(self) -> bool:
        return self.check is not None

    def holds(self, response: str, positive: bool = True) -> bool | None:
        """Whether `response` follows this principle in the given form (None: the principle has no check)."""
        if self.check is None:
            return None
        if positive:
            return self.check(response)
        if self.antithesis_check is not None:
            return self.antithesis_check(response)
        return not self.check(response)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "principle": self.principle, "antithesis": self.antithesis}
        if self.check is not None:
            d["check"] = self.check.to_json()
        if self.antithesis_check is not None:
            d["antithesis_check"] = self.antithesis_check.to_json()
        return d

    @classmethod
    def from_dict(cls, x: dict[str, Any], where: str = "principle") -> Principle:
        """A principle from its file form; check fields are validated (errors name `where`)."""
        name = x.get("name")
        label = f"{where} ({name})" if isinstance(name, str) else where
        check = parse_check_set(x["check"], f"{label}.check") if x.get("check") is not None else None
        anti = x.get("antithesis_check")
        if anti is not None and check is None:
            raise SamiInputError(f"{label}.antithesis_check: needs a `check` on the principle too")
        anti_check = parse_check_set(anti, f"{label}.antithesis_check") if anti is not None else None
        return cls(x["name"], x["principle"], x["antithesis"], check, anti_check)


@dataclass(frozen=True)
class Constitution:
    """An ordered list of principles, each in positive (`True`) or antithesis (`False`) form."""

    items: tuple[tuple[Principle, bool], ...]

    def render(self) -> str:
        """The numbered list shown in prompts: "1. <text>\\n2. <text>"."""
        return "\n".join(f"{i}. {p.text(positive)}" for i, (p, positive) in enumerate(self.items, start=1))

    def shuffled(self, rng: random.Random) -> Constitution:
        """The same principles and signs in a random order."""
        items = list(self.items)
        rng.shuffle(items)
        return Constitution(tuple(items))

    def flipped(self, names: set[str] | None = None) -> Constitution:
        """The same principles in the same order with the signs of `names` flipped (all when None): the
        antithesis constitution, or the constitution that differs in one principle."""
        return Constitution(
            tuple(
                (p, positive if names is not None and p.name not in names else not positive)
                for p, positive in self.items
            )
        )

    def is_positive(self) -> bool:
        """Whether every principle is in its positive form."""
        return all(positive for _, positive in self.items)

    def signs(self) -> dict[str, bool]:
        """Principle name -> positive?"""
        return {p.name: positive for p, positive in self.items}

    def label(self) -> str:
        """A stable short name, independent of display order: e.g. "-harmless +helpful" (sorted by name)."""
        return " ".join(f"{'+' if positive else '-'}{name}" for name, positive in sorted(self.signs().items()))

    def to_dict(self) -> dict[str, Any]:
        """`{"label", "principles": [{"name", "principle", "antithesis", "positive"}, ...]}` in display order."""
        return {
            "label": self.label(),
            "principles": [{**p.to_dict(), "positive": positive} for p, positive in self.items],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Constitution:
        """Inverse of `to_dict` (the `label` key, if present, is ignored)."""
        try:
            items = tuple(
                (
                    Principle.from_dict(
                        {
                            **x,
                            "name": str(x["name"]),
                            "principle": str(x["principle"]),
                            "antithesis": str(x["antithesis"]),
                        }
                    ),
                    bool(x["positive"]),
                )
                for x in d["principles"]
            )
        except (KeyError, TypeError) as e:
            raise SamiInputError(f"constitution record: missing or malformed field {e}") from None
        return cls(items)


@dataclass
class ConstitutionSet:
    """The principles of one task: the file format of the paper's constitution files (JSON or YAML).

    `{"task": "dialogue"|"summarization", "writer": str, "principles": [{"name", "principle", "antithesis"}],
    "train_principles": [names] (optional), "heldout_principles": [names] (optional)}`
    """

    task: str
    writer: str
    principles: list[Principle]
    train_principles: list[str] | None = None
    heldout_principles: list[str] | None = None
    source: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.principles]

    @property
    def checkable(self) -> bool:
        """Whether any principle carries a check."""
        return any(p.checkable for p in self.principles)

    def get(self, name: str) -> Principle:
        """The principle called `name`."""
        for p in self.principles:
            if p.name == name:
                return p
        raise SamiInputError(f"{self._where()}no principle named {name!r} (have {self.names})")

    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""

    def validate(self) -> None:
        """Raise `SamiInputError` naming the field if anything is wrong."""
        where = self._where()
        if not isinstance(self.task, str) or not self.task.strip():
            raise SamiInputError(f"{where}task: must be a non-empty string")
        if not self.principles:
            raise SamiInputError(f"{where}principles: at least one principle is needed")
        seen: set[str] = set()
        for i, p in enumerate(self.principles):
            for key in ("name", "principle", "antithesis"):
                value = getattr(p, key)
                if not isinstance(value, str) or not value.strip():
                    raise SamiInputError(f"{where}principles[{i}].{key}: must be a non-empty string")
            if "\n" in p.name:
                raise SamiInputError(f"{where}principles[{i}].name: must be one line")
            if p.name in seen:
                raise SamiInputError(f"{where}principles[{i}].name: duplicate name {p.name!r}")
            seen.add(p.name)
            if p.principle.strip() == p.antithesis.strip():
                raise SamiInputError(f"{where}principles[{i}] ({p.name}): antithesis equals the principle")
        for key in ("train_principles", "heldout_principles"):
            names = getattr(self, key)
            if names is None:
                continue
            if not names:
                raise SamiInputError(f"{where}{key}: empty list (leave it out instead)")
            unknown = [n for n in names if n not in seen]
            if unknown:
                raise SamiInputError(f"{where}{key}: unknown principle(s) {unknown}")
            if len(set(names)) != len(names):
                raise SamiInputError(f"{where}{key}: duplicate names")
        if self.train_principles and self.heldout_principles:
            both = sorted(set(self.train_principles) & set(self.heldout_principles))
            if both:
                raise SamiInputError(f"{where}{both} are both train and held-out principles")

    def pool(self, mode: str = "train") -> list[Principle]:
        """The principles a scheme draws from in `mode` (see the module docstring)."""
        if mode == "train":
            names = self.train_principles or self.names
        elif mode == "eval":
            names = self.names
        elif mode == "heldout":
            if not self.heldout_principles:
                raise SamiInputError(f"{self._where()}mode 'heldout' needs heldout_principles in the file")
            names = self.heldout_principles
        else:
            raise SamiInputError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        return [self.get(n) for n in names]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "task": self.task,
            "writer": self.writer,
            "principles": [p.to_dict() for p in self.principles],
        }
        if self.train_principles is not None:
            d["train_principles"] = list(self.train_principles)
        if self.heldout_principles is not None:
            d["heldout_principles"] = list(self.heldout_principles)
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "") -> ConstitutionSet:
        """Build and validate a set from parsed JSON/YAML; errors name `source` and the field."""
        where = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise SamiInputError(f"{where}expected a mapping with task, writer and principles")
        unknown = sorted(set(d) - _SET_KEYS)
        if unknown:
            raise SamiInputError(f"{where}unknown field(s) {unknown}; allowed: {sorted(_SET_KEYS)}")
        for key in ("task", "principles"):
            if key not in d:
                raise SamiInputError(f"{where}{key}: missing")
        raw = d["principles"]
        if not isinstance(raw, list):
            raise SamiInputError(f"{where}principles: expected a list")
        principles = []
        for i, x in enumerate(raw):
            if not isinstance(x, dict):
                raise SamiInputError(f"{where}principles[{i}]: expected a mapping with name, principle, antithesis")
            bad = sorted(set(x) - _PRINCIPLE_KEYS - _CHECK_KEYS)
            missing = sorted(_PRINCIPLE_KEYS - set(x))
            if bad or missing:
                raise SamiInputError(f"{where}principles[{i}]: unknown field(s) {bad}, missing field(s) {missing}")
            principles.append(Principle.from_dict(x, f"{where}principles[{i}]"))
        for key in ("train_principles", "heldout_principles"):
            value = d.get(key)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise SamiInputError(f"{where}{key}: expected a list of principle names")
        return cls(
            task=d["task"],
            writer=str(d.get("writer") or ""),
            principles=principles,
            train_principles=d.get("train_principles"),
            heldout_principles=d.get("heldout_principles"),
            source=source,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConstitutionSet:
        """Load a `.json`, `.yaml` or `.yml` constitution file."""
        path = Path(path)
        if not path.is_file():
            raise SamiInputError(f"{path}: constitution file not found")
        text = read_text(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise SamiInputError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        elif suffix in (".yaml", ".yml"):
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                line = f":{mark.line + 1}" if mark is not None else ""
                raise SamiInputError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
        else:
            raise SamiInputError(f"{path}: expected a .json, .yaml or .yml constitution file")
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the set atomically, as YAML for `.yaml`/`.yml` and JSON otherwise."""
        path = Path(path)
        if path.suffix.lower() in (".yaml", ".yml"):
            atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100))
        else:
            atomic_write_json(path, self.to_dict())
        return path


def bundled_constitution_path(name: str) -> Path:
    """Path of a constitution file shipped with the package (one of `BUNDLED_CONSTITUTIONS`)."""
    return Path(__file__).parent / "assets" / "constitutions" / f"{name}.json"


def load_constitutions(ref: str | os.PathLike) -> ConstitutionSet:
    """Load a constitution set from a file path or a bundled name (hh_opus, tldr_mistral, tldr_opus,
    tldr_diverse_opus). An existing path wins over a bundled name."""
    path = Path(ref).expanduser()
    if path.is_file():
        return ConstitutionSet.load(path)
    if str(ref) in BUNDLED_CONSTITUTIONS:
        return ConstitutionSet.load(bundled_constitution_path(str(ref)))
    raise SamiInputError(f"{ref}: neither a constitution file nor a bundled name ({', '.join(BUNDLED_CONSTITUTIONS)})")


def _make(principles: list[Principle], signs: list[bool]) -> Constitution:
    return Constitution(tuple(zip(principles, signs, strict=True)))


def _subset_of(query: Query | None) -> str:
    if query is None:
        raise SamiInputError("scheme 'paper-dialogue' needs the query (its meta['subset'] picks the negatives)")
    subset = str(query.meta.get("subset") or "").lower()
    for name in ("helpful", "harmless"):
        if subset.startswith(name):
            return name
    raise SamiInputError(
        f"query {query.id}: scheme 'paper-dialogue' needs meta['subset'] 'helpful' or 'harmless', got {subset!r} "
        "(set `subset` on the query source, or use the 'uniform' scheme)"
    )


def max_constitutions(cset: ConstitutionSet, scheme: str, mode: str = "train") -> int:
    """How many distinct constitutions `scheme` can return for one query."""
    if scheme == "uniform":
        return 2 ** len(cset.pool(mode))
    if scheme in ("paper-dialogue", "paper-summarization", "opposite", "diverse"):
        return 2
    raise SamiInputError(f"scheme: expected one of {list(SCHEMES)}, got {scheme!r}")


def sample_constitutions(
    cset: ConstitutionSet,
    scheme: str,
    n: int,
    rng: random.Random,
    *,
    query: Query | None = None,
    mode: str = "train",
    shuffle: bool = True,
) -> list[Constitution]:
    """Pick `n` distinct constitutions for one query; the first is the positive one used for evaluation.

    `scheme` is one of `SCHEMES` (see the module docstring), `mode` one of train/eval/heldout (which
    principles the pool holds). Principle order is shuffled per constitution with `rng` unless
    `shuffle=False`. Raises `SamiInputError` if `n` exceeds what the scheme can form.
    """
    limit = max_constitutions(cset, scheme, mode)
    if not isinstance(n, int) or n < 1:
        raise SamiInputError(f"number of constitutions must be a positive integer, got {n!r}")
    if n > limit:
        raise SamiInputError(
            f"scheme {scheme!r} can form at most {limit} distinct constitutions per query here, got n={n}"
        )
    if scheme == "uniform":
        pool = cset.pool(mode)
        k = len(pool)
        # Bit i of a pattern set = principle i negated; pattern 0 is all-positive.
        if k <= 60:
            patterns = [0, *rng.sample(range(1, 2**k), n - 1)]
        else:  # too many patterns for range(): draw until n distinct
            patterns = [0]
            while len(patterns) < n:
                m = rng.getrandbits(k)
                if m not in patterns:
                    patterns.append(m)
        out = [_make(pool, [not (m >> i) & 1 for i in range(k)]) for m in patterns]
    elif scheme == "paper-dialogue":
        subset = _subset_of(query)
        helpful, harmless = cset.get("helpful"), cset.get("harmless")
        pool = [helpful, harmless]
        if subset == "helpful":
            negative = [False, rng.random() < 0.5]
        else:
            negative = [rng.random() < 0.5, False]
        out = [_make(pool, [True, True]), _make(pool, negative)]
    elif scheme == "paper-summarization":
        pool = cset.pool(mode)
        k = len(pool)
        m = rng.randrange(1, 2**k)
        out = [_make(pool, [True] * k), _make(pool, [not (m >> i) & 1 for i in range(k)])]
    elif scheme == "opposite":
        pool = cset.pool(mode)
        out = [_make(pool, [True] * len(pool)), _make(pool, [False] * len(pool))]
    else:  # diverse
        pool = cset.pool(mode)
        if len(pool) < 2:
            raise SamiInputError(f"{cset._where()}scheme 'diverse' needs at least 2 principles in mode {mode!r}")
        chosen = rng.sample(pool, 2)
        signs = [rng.random() < 0.5 for _ in chosen]
        out = [_make(chosen, signs), _make(chosen, [not s for s in signs])]
    out = out[:n]
    if shuffle:
        out = [c.shuffled(rng) for c in out]
    return out
