"""The top of the report page: the answer first.

One verdict per principle (adherence under the principle and under its antithesis, the base model → the last
evaluated iteration, with 95% intervals), one lead plot (adherence across iterations, or the win rate when no
principle carries a check), the last iteration's win rate against the base model and IFEval beside it, and one
sample pair. The detailed tables follow on the page (`sami.report.html`).
"""

from __future__ import annotations

from sami.report.render import escape
from sami.run_files import AdherenceRate, IterationSummary, Summary, as_summary

IFEVAL_KEYS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")


Interval = tuple[float, float] | None


def _rate(value: float | None, ci: Interval) -> str:
    if value is None:
        return "—"
    if ci is not None:
        return f"{value:.2f} [{ci[0]:.2f}–{ci[1]:.2f}]"
    return f"{value:.2f}"


def _interval(rate: AdherenceRate | None, key: str) -> Interval:
    return getattr(rate, f"{key}_ci95", None)


def change_word(first: AdherenceRate | None, last: AdherenceRate | None, key: str) -> str:
    """ "rose" / "fell" when the last 95% interval lies wholly above / below the first one, else "no clear change"."""
    a, b = _interval(first, key), _interval(last, key)
    if a is None or b is None:
        return "—"
    if b[0] > a[1]:
        return "rose"
    if b[1] < a[0]:
        return "fell"
    return "no clear change"


def evaluated(summary: Summary, key: str) -> tuple[IterationSummary | None, IterationSummary | None]:
    """(iteration 0's entry, the last entry) among the iterations whose `key` is present."""
    rows = [it for it in summary.iterations if getattr(it, key)]
    if not rows:
        return None, None
    return rows[0], rows[-1] if len(rows) > 1 else None


def verdict_rows(summary: Summary | dict) -> list[dict]:
    """Per principle (then "all principles"): base → last adherence under the principle and the antithesis."""
    summary = as_summary(summary)
    first, last = evaluated(summary, "adherence")
    if first is None or first.adherence is None:
        return []
    a0, a1 = first.adherence, last.adherence if last is not None else None
    names = sorted(a0.by_principle)
    groups = [(n, a0.by_principle.get(n), a1.by_principle.get(n) if a1 else None) for n in names]
    if len(names) > 1:
        groups.append(("all principles", a0, a1))
    rows = []
    for name, x, y in groups:
        row = {"name": name, "from": first.iteration, "to": last.iteration if last else None}
        for key in ("positive", "antithesis"):
            row[key] = (_rate(getattr(x, key, None), _interval(x, key)),
                        _rate(getattr(y, key), _interval(y, key)) if y else "—",
                        change_word(x, y, key) if y else "not trained yet")  # fmt: skip
        rows.append(row)
    return rows


def _win_rate(summary: Summary) -> str:
    _, last = evaluated(summary, "win_rates")
    first, _ = evaluated(summary, "iteration")
    entry = last or first
    w = entry.win_rates.get("base") if entry is not None else None
    if w is None or w.win_rate is None:
        return "<p class='muted'>no win rate against the base model yet</p>"
    ci_text = f" [{w.ci95[0]:.1%}–{w.ci95[1]:.1%}]" if w.ci95 is not None else ""
    lc = w.length_controlled_win_rate
    extra = f"<div class='muted'>length-controlled {lc:.1%}</div>" if lc is not None else ""
    t = entry.iteration
    return (f"<div class='big'>{w.win_rate:.1%}<span class='muted'>{escape(ci_text)}</span></div>"
            f"<div class='muted'>iteration {t} vs the base model, {w.n} queries</div>{extra}")  # fmt: skip


def _ifeval(summary: Summary) -> str:
    rows = [(it.iteration, it.benchmarks.ifeval) for it in summary.iterations if it.benchmarks.ifeval is not None]
    if not rows:
        return "<p class='muted'>not measured (add <code>evaluation.benchmarks: [ifeval]</code>)</p>"
    ends = (rows[0], rows[-1]) if len(rows) > 1 else (rows[0],)
    cells = []
    for key in IFEVAL_KEYS:
        values = []
        for _, r in ends:
            v, se = getattr(r, key), getattr(r, f"{key}_stderr")
            values.append("—" if v is None else f"{v:.3f}" + (f" ± {se:.3f}" if se is not None else ""))
        label = key.removesuffix("_acc").replace("_level_", "-level ").replace("inst", "instruction")
        cells.append(f"<tr><td class=l>{escape(label)}</td><td>{' → '.join(values)}</td></tr>")
    n = rows[-1][1].num_prompts
    its = " → ".join(str(t) for t, _ in ends)
    return (f"<table class='narrow'><tbody>{''.join(cells)}</tbody></table>"
            f"<div class='muted'>iteration {its}; {n} IFEval prompts, accuracy ± standard error</div>")  # fmt: skip


def _verdicts(summary: Summary) -> str:
    rows = verdict_rows(summary)
    if not rows:
        return "<p class='muted'>no principle carries a check: see the win rate and the tables below</p>"
    first, last = rows[0]["from"], rows[0]["to"]
    head = (f"<tr><th class=l>principle</th><th class=l>under the principle: {first} → {last}</th><th class=l></th>"
            f"<th class=l>under its antithesis: {first} → {last}</th><th class=l></th></tr>")  # fmt: skip
    body = ""
    for r in rows:
        cells = "".join(
            f"<td class=l>{escape(r[k][0])} → {escape(r[k][1])}</td><td class=l><span class='tag {_tag(r[k][2])}'>"
            f"{escape(r[k][2])}</span></td>"
            for k in ("positive", "antithesis")
        )
        body += f"<tr><td class=l><b>{escape(r['name'])}</b></td>{cells}</tr>"
    return (f"<table><thead>{head}</thead><tbody>{body}</tbody></table><p class='muted'>Fraction of held-out "
            "responses that follow the principle when the constitution states it, and that follow the antithesis "
            "when it states the antithesis; 95% Wilson intervals. \"rose\" / \"fell\": the last interval lies wholly "
            "above / below iteration 0's.</p>")  # fmt: skip


def _tag(word: str) -> str:
    return {"rose": "win", "fell": "loss"}.get(word, "")


def _sample(examples: dict) -> str:
    pairs = examples.get("base_vs_latest")
    if not pairs or not pairs.get("pairs"):
        return ""
    pair = pairs["pairs"][0]
    return (f"<h3>A sample pair (positive constitution)</h3><div class='query'>{escape(pair['query'])}</div>"
            "<div class='pair' style='grid-template-columns:1fr 1fr'>"
            f"<div class='resp base'><h4><span>base model</span></h4><pre>{escape(pair['base'].get('response'))}</pre>"
            f"</div><div class='resp pos'><h4><span>iteration {escape(pairs['iteration'])}</span></h4>"
            f"<pre>{escape(pair['model'].get('response'))}</pre></div></div>")  # fmt: skip


def render_answer(summary: Summary | dict, lead_plot: tuple[str, str, str] | None, examples: dict) -> str:
    """The answer section; `lead_plot` is (name, data URI, caption) of the plot shown beside the numbers."""
    summary = as_summary(summary)
    figure = ""
    if lead_plot is not None:
        name, uri, caption = lead_plot
        figure = (f"<figure><img src='{uri}' alt='{escape(name)} plot'><figcaption>{escape(caption)}</figcaption>"
                  "</figure>")  # fmt: skip
    return (
        "<h2>Did it work?</h2><div class='card answer'>"
        + _verdicts(summary)
        + "<div class='answer-grid'><div>"
        + figure
        + "</div><div><h3>Win rate against the base model</h3>"
        + _win_rate(summary)
        + "<h3>IFEval (instruction following in general)</h3>"
        + _ifeval(summary)
        + "</div></div>"
        + _sample(examples)
        + "</div>"
    )
