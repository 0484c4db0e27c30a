"""The principle writer: an instruction-tuned model writes each principle and its antithesis.

For every requested principle ("concise", or "comprehensive: covers the key points") the model gets one
chat prompt with a few worked examples and answers in two lines:

    Principle: <one sentence stating the principle>
    Antithesis: <one sentence stating the opposite principle>

This line format (rather than JSON) is the one the small default model (SmolLM2-135M-Instruct) follows
most reliably; the parser is lenient (any case, markdown bold, bullets, quotes, the value on the next line,
or a JSON object with "principle"/"antithesis" keys). An answer is rejected when a part is missing or
empty, still holds template text ("[insert", "<...>"), or the antithesis only repeats the principle
(equal after normalising case and punctuation, or one begins with the other). Rejected principles are
asked again, up to `retries` more times: the first attempt is greedy, retries sample with
`retry_temperature` and a seed derived from `seed`, so a run is reproducible. If a principle still has no
valid answer, `SamiInputError` says which one and why.

The writer takes any `sami.generation.TextGenerator`; small models write weak principles, so for real
experiments use a strong instruction-tuned model (e.g. through an OpenAI-compatible endpoint).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sami.constitutions import ConstitutionSet, Principle
from sami.data import QuerySource, load_queries
from sami.endpoint import EndpointSettings
from sami.errors import SamiInputError
from sami.evaluation.context import EvaluationInputs
from sami.evaluation.evaluate import run_evaluation
from sami.evaluation.settings import EvaluationSettings
from sami.generation import (  # factory.make_generator: looked up at call time (tests patch it)
    HFGeneration,
    OpenAIGeneration,
    factory,
)
from sami.models import DEFAULT_MODEL_NAME
from sami.run_config import WriterSettings

log = logging.getLogger(__name__)

WRITER_SYSTEM = (
    "You write principles that guide an AI model on a task. Answer in exactly two lines. The line "
    "'Principle:' states the principle in one sentence. The line 'Antithesis:' states the opposite "
    "principle in one sentence. Begin both sentences with the given words."
)
# (task, principle request, opening words, principle, antithesis): worked examples shown before every request.
WRITER_EXAMPLES: list[tuple[str, str, str, str, str]] = [
    (
        "answer cooking questions",
        "accurate",
        "Answers should",
        "Answers should be accurate, with correct facts and cooking times.",
        "Answers should not be accurate, and should give wrong facts and cooking times.",
    ),
    (
        "write product descriptions",
        "short (uses few words)",
        "Descriptions should",
        "Descriptions should be short and use few words.",
        "Descriptions should not be short, and should use many words.",
    ),
    (
        "tutor students in math",
        "patient",
        "Explanations should",
        "Explanations should be patient, calm and encouraging.",
        "Explanations should not be patient, and should be hurried and discouraging.",
    ),
]
# Opening words of both sentences per task type; they keep small models on the "X should ..." pattern.
OPENINGS = {"summarization": "Summaries should", "dialogue": "Responses should"}
LEFTOVERS = ("[insert", "<one sentence", "<", ">", "{", "}", "Principle:", "Antithesis:")
MAX_CHARS = 600


@dataclass(frozen=True)
class PrincipleRequest:
    """A principle to write: its `name` and an optional short description of what it means."""

    name: str
    description: str | None = None

    @classmethod
    def parse(cls, spec: str) -> PrincipleRequest:
        """ "concise" or "comprehensive: covers the key points" (name, then an optional description)."""
        name, _, description = str(spec).partition(":")
        name, description = name.strip(), description.strip()
        if not name:
            raise SamiInputError(f"principle {spec!r}: empty name (use 'name' or 'name: short description')")
        if "\n" in name:
            raise SamiInputError(f"principle {spec!r}: the name must be one line")
        return cls(name, description or None)

    def label(self) -> str:
        return f"{self.name} ({self.description})" if self.description else self.name


class WriterParseError(SamiInputError):
    """One writer answer could not be turned into a valid principle."""


def _request_text(task: str, request: str, opening: str) -> str:
    return f"Task: {task}\nPrinciple: {request}\nBegin with: {opening}"


def writer_messages(task: str, request: PrincipleRequest, opening: str = "Responses should") -> list[dict]:
    """The chat prompt asking for one principle and its antithesis, both beginning with `opening`."""
    messages = [{"role": "system", "content": WRITER_SYSTEM}]
    for ex_task, ex_request, ex_opening, ex_principle, ex_antithesis in WRITER_EXAMPLES:
        messages.append({"role": "user", "content": _request_text(ex_task, ex_request, ex_opening)})
        messages.append({"role": "assistant", "content": f"Principle: {ex_principle}\nAntithesis: {ex_antithesis}"})
    messages.append({"role": "user", "content": _request_text(task.strip(), request.label(), opening)})
    return messages


_LINE = re.compile(r"^[\s>*_#\-\d.)]*(principle|antithesis)\s*[*_]*\s*[:=\-]\s*(.*)$", re.IGNORECASE)


def _clean(value: str) -> str:
    value = value.strip().strip("*_").strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`":
        value = value[1:-1].strip()
    return value.strip("\u201c\u201d").strip()


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def parse_writer_answer(text: str, name: str) -> Principle:
    """Turn one answer into a `Principle` named `name`, or raise `WriterParseError` saying what is wrong."""
    found: dict[str, str] = {}
    stripped = text.strip()
    if stripped.startswith("{") or stripped.startswith("```"):
        match = re.search(r"\{.*\}", stripped, re.DOTALL)
        if match:
            try:
                obj = json.loads(match.group(0))
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                for key, value in obj.items():
                    if str(key).lower() in ("principle", "antithesis") and isinstance(value, str):
                        found[str(key).lower()] = _clean(value)
    if not found:
        # "Principle: ... Antithesis: ..." on one line: put the antithesis on its own line.
        text = re.sub(r"(?<=\S)[ \t]+(?=(?:\*\*)?antithesis\s*(?:\*\*)?\s*:)", "\n", text, flags=re.IGNORECASE)
        lines = text.splitlines()
        for i, line in enumerate(lines):
            m = _LINE.match(line)
            if not m:
                continue
            key, value = m.group(1).lower(), _clean(m.group(2))
            if not value:  # the value on the next non-empty line
                value = next((_clean(x) for x in lines[i + 1 :] if x.strip()), "")
                if _LINE.match(value):
                    value = ""
            if key not in found:
                found[key] = value
    for key in ("principle", "antithesis"):
        if not found.get(key):
            raise WriterParseError(f"no '{key.capitalize()}:' line with text")
    principle, antithesis = found["principle"], found["antithesis"]
    for key, value in (("principle", principle), ("antithesis", antithesis)):
        for leftover in LEFTOVERS:
            if leftover in value:
                raise WriterParseError(f"the {key} holds template text {leftover!r}")
        if len(value) > MAX_CHARS:
            raise WriterParseError(f"the {key} is longer than {MAX_CHARS} characters")
        if len(_normalise(value).split()) < 2:
            raise WriterParseError(f"the {key} is not a sentence: {value!r}")
    p, a = _normalise(principle).split(), _normalise(antithesis).split()
    shorter = min(len(p), len(a))
    if p[:shorter] == a[:shorter]:  # equal, or one only extends the other
        raise WriterParseError("the antithesis repeats the principle")
    return Principle(name=name, principle=principle, antithesis=antithesis)


def infer_task_type(task: str) -> str:
    """The prompt family for a task description: "summarization" if it mentions summaries, else "dialogue"."""
    lowered = task.lower()
    return "summarization" if "summar" in lowered or "tl;dr" in lowered else "dialogue"


def check_requests(task: str, principles: list, retries: int = 0) -> list[PrincipleRequest]:
    """Validate the writer's inputs (before any model is loaded); returns the parsed principle requests."""
    if not task or not task.strip():
        raise SamiInputError("task: describe the task, e.g. 'summarize Reddit posts'")
    if retries < 0:
        raise SamiInputError(f"retries: must be >= 0, got {retries}")
    requests = [p if isinstance(p, PrincipleRequest) else PrincipleRequest.parse(p) for p in principles]
    if not requests:
        raise SamiInputError("give at least one principle")
    names = [r.name for r in requests]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SamiInputError(f"principle names must be distinct; repeated: {duplicates}")
    return requests


def write_principles(
    generator: Any,
    task: str,
    principles: list[str | PrincipleRequest],
    *,
    retries: int = 3,
    seed: int = 0,
    task_type: str | None = None,
    writer: str = "",
    opening: str | None = None,
    max_new_tokens: int = 120,
    retry_temperature: float = 0.8,
    top_p: float = 0.95,
) -> ConstitutionSet:
    """Ask `generator` (a `TextGenerator`) to write each principle and its antithesis for `task`.

    All principles are asked in one batch; those with an invalid answer are asked again (sampled, seed
    `seed + attempt`) up to `retries` more times. Returns a validated `ConstitutionSet` whose `task` is
    `task_type` (default: inferred from the description, see `infer_task_type`) and whose `writer` names
    the model and the task description. Both sentences begin with `opening` (default by task type:
    "Summaries should" / "Responses should"). Raises `SamiInputError` naming the principle that failed.
    """
    requests = check_requests(task, principles, retries)
    task_type = task_type or infer_task_type(task)
    opening = opening or OPENINGS.get(task_type, "Responses should")
    written: dict[str, Principle] = {}
    problems: dict[str, tuple[str, str]] = {}
    pending = list(requests)
    for attempt in range(retries + 1):
        if not pending:
            break
        greedy = attempt == 0
        completions = generator.generate(
            [writer_messages(task, r, opening) for r in pending],
            max_new_tokens=max_new_tokens,
            temperature=0.0 if greedy else retry_temperature,
            top_p=1.0 if greedy else top_p,
            seed=seed + attempt,
        )
        still = []
        for request, completion in zip(pending, completions, strict=True):
            text = getattr(completion, "text", completion)
            error = getattr(completion, "error", None)
            try:
                if error:
                    raise WriterParseError(f"generation failed ({error})")
                written[request.name] = parse_writer_answer(str(text), request.name)
            except WriterParseError as e:
                problems[request.name] = (str(e), str(text))
                log.info("principle %r, attempt %d: %s", request.name, attempt + 1, e)
                still.append(request)
        pending = still
    if pending:
        name = pending[0].name
        reason, text = problems[name]
        short = " ".join(text.split())[:120]
        raise SamiInputError(
            f"principle {name!r}: no valid answer from the writer model in {retries + 1} attempts "
            f"(last problem: {reason}; last answer: {short!r}); try more retries or a stronger model"
        )
    label = writer or "unknown model"
    return ConstitutionSet(
        task=task_type,
        writer=f"{label} (sami principles write; task: {task.strip()})",
        principles=[written[r.name] for r in requests],
    )


def write_constitutions_from_settings(
    settings: WriterSettings, *, seed: int = 0, task_type: str | None = None
) -> ConstitutionSet:
    """Run the writer as `settings` says (the model or server writing, the task, the principles)."""
    backend = "openai" if settings.base_url else settings.backend
    if backend == "openai":
        endpoint = {name: getattr(settings, name) for name in EndpointSettings.model_fields}
        gen_settings: HFGeneration | OpenAIGeneration = OpenAIGeneration(**endpoint, seed=seed)
        label = settings.model_name or "the server's model"
    else:
        gen_settings = HFGeneration(model=settings.model, seed=seed)
        label = settings.model
    check_requests(settings.task, list(settings.principles), settings.retries)
    generator = factory.make_generator(gen_settings)
    if backend != "openai" and label == "default":
        label = DEFAULT_MODEL_NAME
    return write_principles(
        generator,
        settings.task,
        list(settings.principles),
        retries=settings.retries,
        seed=seed,
        task_type=task_type,
        writer=label,
    )


def contrast_check(
    cset,
    *,
    queries: str | None = None,
    n_queries: int = 4,
    model: str = "default",
    style: str = "chat",
    max_new_tokens: int = 64,
    out_dir: str | None = None,
    console=None,
) -> dict:
    """SAMI's precondition on written principles: flipping a principle must change what the model writes.

    Generates greedy responses of `model` to `n_queries` queries (`queries`: a bundled name or a JSONL path;
    default the bundled HH-RLHF helpful test queries, or TL;DR posts for a summarization set) under the
    all-positive constitution and under each one-principle-flipped variant, and returns the evaluation's
    `contrast` metrics (`sami.evaluation.contrast.contrast_metrics`): per principle the MI of the pair and, where
    the principle has a check, adherence; `warnings` names the weak pairs. Files go to `out_dir` (default: a
    temporary folder, removed afterwards).
    """
    if queries is None:
        queries = "tldr_validation" if cset.task == "summarization" else "hh_helpful_test"
    source = QuerySource(bundled=queries) if not Path(queries).exists() else QuerySource(path=queries)
    loaded = load_queries(source)[:n_queries]
    settings = EvaluationSettings(
        scheme="opposite", n_constitutions=2, mode="eval", style=style, intrinsic=False, adherence=False,
        max_new_tokens=max_new_tokens, batch_size=max(1, n_queries),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sami-contrast-") as tmp:
        metrics = run_evaluation(
            settings, model, out_dir or tmp,
            EvaluationInputs(queries=loaded, cset=cset, judge=False, baselines={}, contrast=True), console=console,
        )  # fmt: skip
    return metrics["contrast"]
