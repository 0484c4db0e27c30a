"""Which generated examples to drop: `FilterSettings` (the `filters` section of a run config), `check_responses`
and the chain-of-thought additions `reasoning_filters`.

`check_responses` applies `FilterSettings` to the C post-processed responses of one query and returns
why the example is dropped, or None to keep it. A reason is `kind` or `kind:detail` (e.g.
"leftover:[insert"); `reason.split(":", 1)[0]` is the kind.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sami.cli_settings import describe_validation_error
from sami.constitutions import Constitution
from sami.errors import SamiInputError

# words a chain-of-thought response must not contain ("talks about the task"), per task
REASONING_BANNED: dict[str, list[str]] = {
    "dialogue": ["principles", "constitution"],
    "summarization": ["principles", "constitution", "summary"],
}

_DEFAULT_LEFTOVERS = ["[insert", "]", "Response", "The assistant"]
_DEFAULT_REFUSALS = ["I'm sorry", "I\u2019m sorry", "I am sorry", "I cannot"]


class FilterSettings(BaseModel):
    """Which generated examples to drop. Defaults are the dialogue preset; see `for_task`.

    Substring and prefix matches are case-sensitive, as in the authors' code, except `extra_banned`
    (case-insensitive unless `banned_case_sensitive`).
    """

    model_config = ConfigDict(extra="forbid")

    leftovers: list[str] = Field(
        default_factory=lambda: list(_DEFAULT_LEFTOVERS),
        description="drop if a response contains one of these template leftovers (case-sensitive substrings)",
    )
    refusal_prefixes: list[str] = Field(
        default_factory=lambda: list(_DEFAULT_REFUSALS),
        description="drop if a response starts with one of these (case-sensitive); [] turns the filter off",
    )
    require_period_positive: bool = Field(False, description='drop unless the positive response ends with "."')
    drop_identical: bool = Field(True, description="drop if two responses of the example are identical")
    drop_empty: bool = Field(True, description="drop if a response is empty")
    max_chars: int | None = Field(None, gt=0, description="drop if a response is longer than this many characters")
    max_tokens: int | None = Field(
        None, gt=0, description="drop if a response has more tokens than this (needs token counts)"
    )
    drop_truncated: bool = Field(
        False, description='drop if generation stopped at the token limit (finish reason "length")'
    )
    extra_banned: list[str] = Field(
        default_factory=list, description='drop if a response contains one of these words (e.g. "constitution")'
    )
    banned_case_sensitive: bool = Field(False, description="match extra_banned case-sensitively")

    @classmethod
    def for_task(cls, task: str, **overrides: Any) -> FilterSettings:
        """The task preset: dialogue drops refusals; summarization requires a period at the end of the
        positive response and ignores refusals. `overrides` are field values on top."""
        if task == "dialogue":
            preset: dict[str, Any] = {}
        elif task == "summarization":
            preset = {"refusal_prefixes": [], "require_period_positive": True}
        else:
            raise SamiInputError(f"task: expected 'dialogue' or 'summarization', got {task!r}")
        try:
            return cls(**{**preset, **overrides})
        except ValidationError as e:
            raise SamiInputError(describe_validation_error(e, "filters")) from None


def reasoning_filters(settings: FilterSettings, task: str) -> FilterSettings:
    """`settings` plus the chain-of-thought "talks about the task" filter: `REASONING_BANNED[task]`
    ("principles", "constitution"; summarization also "summary") added to `extra_banned`."""
    if task not in REASONING_BANNED:
        raise SamiInputError(f"task: expected 'dialogue' or 'summarization', got {task!r}")
    have = {w.lower() for w in settings.extra_banned}
    extra = [w for w in REASONING_BANNED[task] if w.lower() not in have]
    return settings.model_copy(update={"extra_banned": [*settings.extra_banned, *extra]})


def check_responses(
    responses: list[str],
    constitutions: list[Constitution],
    settings: FilterSettings,
    *,
    num_tokens: list[int] | None = None,
    finish_reasons: list[str] | None = None,
) -> str | None:
    """None to keep the example (the C responses of one query), else why it is dropped.

    `responses[j]` was generated under `constitutions[j]`; index 0 is the positive one. Reasons, in the
    order checked: "empty", "too_long:chars", "too_long:tokens", "truncated", "leftover:<s>",
    "refusal:<prefix>", "banned:<word>", "no_period", "identical".
    """
    if len(responses) != len(constitutions):
        raise ValueError(f"{len(responses)} responses for {len(constitutions)} constitutions")
    stripped = [r.strip() for r in responses]
    if settings.drop_empty and any(not r for r in stripped):
        return "empty"
    if settings.max_chars is not None and any(len(r) > settings.max_chars for r in stripped):
        return "too_long:chars"
    if settings.max_tokens is not None and num_tokens is not None:
        if any(n > settings.max_tokens for n in num_tokens):
            return "too_long:tokens"
    if settings.drop_truncated and finish_reasons is not None and "length" in finish_reasons:
        return "truncated"
    for s in settings.leftovers:
        if s and any(s in r for r in responses):
            return f"leftover:{s}"
    for prefix in settings.refusal_prefixes:
        if prefix and any(r.startswith(prefix) for r in stripped):
            return f"refusal:{prefix}"
    for word in settings.extra_banned:
        if not word:
            continue
        if settings.banned_case_sensitive:
            hit = any(word in r for r in responses)
        else:
            hit = any(word.lower() in r.lower() for r in responses)
        if hit:
            return f"banned:{word}"
    if settings.require_period_positive and stripped and not stripped[0].endswith("."):
        return "no_period"
    if settings.drop_identical and len(set(stripped)) < len(stripped):
        return "identical"
    return None
