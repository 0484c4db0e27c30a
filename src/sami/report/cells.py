"""The report's cells: the one number formatter (`fmt`), intervals, win rates, adherence fractions and lengths.
A missing value (None: the typed run files read a missing, NaN or infinite number as None) is always `DASH`."""

from __future__ import annotations

from sami.run_files import Lengths, WinRate

DASH = "—"
Interval = tuple[float, float] | None


def fmt(value: float | None, digits: int = 3, *, percent: bool = False, signed: bool = False) -> str:
    """A number with `digits` decimals (as a percentage of 1 with `percent`), or `DASH` when missing."""
    if value is None:
        return DASH
    sign = "+" if signed else ""
    return f"{100 * value:{sign}.{digits}f}%" if percent else f"{value:{sign}.{digits}f}"


def fmt_interval(ci: Interval, digits: int = 1, *, percent: bool = True) -> str:
    """A `[low, high]` interval ("[52.0, 72.0]" for rates in percent), or "" when there is none."""
    if ci is None:
        return ""
    scale = 100 if percent else 1
    return f"[{fmt(scale * ci[0], digits)}, {fmt(scale * ci[1], digits)}]"


def rate_ci(summary: WinRate | None) -> str:
    """A win rate with its 95% interval: "62.5% [52.0, 72.0]"."""
    s = summary or WinRate()
    rate, ci = fmt(s.win_rate, 1, percent=True), fmt_interval(s.ci95)
    return f"{rate} {ci}" if ci and rate != DASH else rate


def fraction_ci(value: float | None, ci: Interval) -> str:
    """An adherence fraction with its interval: "0.62 [0.50, 0.72]"."""
    text, interval = fmt(value, 2), fmt_interval(ci, 2, percent=False)
    return f"{text} {interval}" if interval and text != DASH else text


def length(value: float | None, tokens: float | None) -> str:
    """A mean length (in the summary's `length_unit`) with the tokens beside when known: "412.0 (98.5 tok)"."""
    text = fmt(value, 1)
    return text if tokens is None else f"{text} ({fmt(tokens, 1)} tok)"


def signed_length(chars: Lengths | None, tokens: Lengths | None, key: str) -> str:
    """The mean length under the positive (`key` "positive") or the other constitutions ("negative")."""
    return length(getattr(chars, key, None), getattr(tokens, key, None))


def count(value: int | None) -> str:
    return fmt(value, 0)
