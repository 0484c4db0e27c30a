"""Reading a judge's verdict ("A" or "B") from its free-text answer: `parse_verdict`.

Hand-written: judge answers come in many shapes ("Final answer: **B**", "(A)", "Response A is better.") and no
library parses them; the rules are those of the docstring below, tested in tests/test_judges.py.
"""

from __future__ import annotations

import re
from typing import Literal

Choice = Literal["A", "B"]

_FINAL = re.compile(r"final\s+(?:answer|response|verdict|choice|decision)\b(.*)", re.IGNORECASE)
_LABEL = re.compile(r"^(?:(?:is|answer|response|summary|option|verdict|choice)\s*)+", re.IGNORECASE)
_ECHO = re.compile(r"^[\W_]*(?:(?:response|summary|option)\s+)?[AB][\W_]*?[:=\-][\W_]*\w", re.IGNORECASE)
_LETTER = re.compile(r"(?<![\w'’])([AB])(?![\w'’])")


def _clean(segment: str) -> str:
    return " ".join(re.sub(r"[*_`#>\"“”'‘’\[\]().:!,<>=\-]", " ", segment).split())


def _one_letter(segment: str, *, max_words: int | None = None) -> Choice | None:
    """The single letter a short segment names ("A", "**B**", "Response A", "A is better"), else None."""
    cleaned = _clean(segment)
    bare = _LABEL.sub("", cleaned).strip()
    if bare.upper() in ("A", "B"):
        return bare.upper()  # type: ignore[return-value]
    letters = set(_LETTER.findall(cleaned))
    if len(letters) != 1 or (max_words is not None and len(cleaned.split()) > max_words):
        return None
    return letters.pop()  # type: ignore[return-value]


def parse_verdict(text: str) -> Choice | None:
    """The judge's final choice, or None when the answer names both letters or neither.

    The last "Final answer: ..." (also "final response/verdict/choice") decides when present: what follows it on
    that line (or on the next line when it is empty) must name exactly one letter. Otherwise the last line must
    be just the letter ("B", "**A**", "(B)", "Response A") or a short sentence naming exactly one ("A is better."),
    and not a repeated response ("B: Sure, ...").
    """
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        match = _FINAL.search(lines[i])
        if match:
            rest = match.group(1)
            if not _clean(rest) and i + 1 < len(lines):
                rest = lines[i + 1]
            return _one_letter(rest)
    if not lines or _ECHO.match(lines[-1]):  # "B: <a response>" repeats a response, it is no verdict
        return None
    return _one_letter(lines[-1], max_words=8)
