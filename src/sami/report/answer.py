"""The top of the report page: the answer first.

One verdict per principle (adherence under the principle and under its antithesis, the base model → the last
evaluated iteration, with 95% intervals), one lead plot (adherence across iterations, or the win rate when no
principle carries a check), the last iteration's win rate against the base model and IFEval beside it, and one
sample pair. The detailed tables follow on the page (`sami.report.html`).
"""

from __future__ import annotations

from typing import Any

from sami.report.render import escape
from sami.report.summary import number

IFEVAL_KEYS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")


def _rate(value: Any, ci: Any) -> str:
    v = number(value)
    if v is None:
        return "—"
    if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci:
        return f"{v:.2f} [{ci[0]:.2f}–{ci[1]:.2f}]"
    return f"{v:.2f}"


def change_word(first: dict | None, last: dict | None, key: str) -> str:
    """ "rose" / "fell" when the last 95% interval lies wholly above / below the first one, else "no clear change"."""
    a, b = (first or {}).get(f"{key}_ci95"), (last or {}).get(f"{key}_ci95")
    if not (isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == 2 and len(b) == 2):
        return "—"
    if b[0] > a[1]:
        return "rose"
    if b[1] < a[0]:
        return "fell"
    return "no clear change"


def evaluated(summary: dict, key: str) -> tuple[dict | None, dict | None]:
    """(iteration 0's entry, the last entry) among the iterations whose `key` is present."""
    rows = [it for it in summary.get("iterations", []) if it.get(key)]
    if not rows:
        return None, None
    return rows[0], rows[-1] if len(rows) > 1 else None


def verdict_rows(summary: dict) -> list[dict]:
    """Per principle (then "all principles"): base → last adherence under the principle and the antithesis."""
    first, last = evaluated(summary, "adherence")
    if first is None:
        return []
    a0, a1 = first["adherence"], (last or {}).get("adherence") or {}
    names = sorted(a0.get("by_principle") or {})
    groups = [(n, (a0.get("by_principle") or {}).get(n), (a1.get("by_principle") or {}).get(n)) for n in names]
    if len(names) > 1:
        groups.append(("all principles", a0, a1 or None))
    rows = []
    for name, x, y in groups:
        row = {"name": name, "from": first["iteration"], "to": last["iteration"] if last else None}
        for key in ("positive", "antithesis"):
            row[key] = (_rate((x or {}).get(key), (x or {}).get(f"{key}_ci95")),
                        _rate((y or {}).get(key), (y or {}).get(f"{key}_ci95")) if y else "—",
                        change_word(x, y, key) if y else "not trained yet")  # fmt: skip
        rows.append(row)
    return rows


def _win_rate(summary: dict) -> str:
    _, last = evaluated(summary, "win_rates")
    first, _ = evaluated(summary, "iteration")
    w = ((last or first or {}).get("win_rates") or {}).get("base")
    if not w or number(w.get("win_rate")) is None:
        return "<p class='muted'>no win rate against the base model yet</p>"
    ci = w.get("ci95") or [None, None]
    lc = number(w.get("length_controlled_win_rate"))
    ci_text = f" [{ci[0]:.1%}–{ci[1]:.1%}]" if None not in ci else ""
    extra = f"<div class='muted'>length-controlled {lc:.1%}</div>" if lc is not None else ""
    it = (last or first)["iteration"]
    return (f"<div class='big'>{number(w['win_rate']):.1%}<span class='muted'>{escape(ci_text)}</span></div>"
            f"<div class='muted'>iteration {it} vs the base model, {w.get('n')} queries</div>{extra}")  # fmt: skip


def _ifeval(summary: dict) -> str:
    rows = [it for it in summary.get("iterations", []) if (it.get("benchmarks") or {}).get("ifeval")]
    if not rows:
        return "<p class='muted'>not measured (add <code>evaluation.benchmarks: [ifeval]</code>)</p>"
    cells = []
    for key in IFEVAL_KEYS:
        values = []
        for it in (rows[0], rows[-1]) if len(rows) > 1 else (rows[0],):
            r = it["benchmarks"]["ifeval"]
            v, se = number(r.get(key)), number(r.get(f"{key}_stderr"))
            values.append("—" if v is None else f"{v:.3f}" + (f" ± {se:.3f}" if se is not None else ""))
        label = key.removesuffix("_acc").replace("_level_", "-level ").replace("inst", "instruction")
        cells.append(f"<tr><td class=l>{escape(label)}</td><td>{' → '.join(values)}</td></tr>")
    n = rows[-1]["benchmarks"]["ifeval"].get("num_prompts")
    its = " → ".join(str(it["iteration"]) for it in ((rows[0], rows[-1]) if len(rows) > 1 else rows))
    return (f"<table class='narrow'><tbody>{''.join(cells)}</tbody></table>"
            f"<div class='muted'>iteration {its}; {n} IFEval prompts, accuracy ± standard error</div>")  # fmt: skip


def _verdicts(summary: dict) -> str:
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


def render_answer(summary: dict, lead_plot: tuple[str, str, str] | None, examples: dict) -> str:
    """The answer section; `lead_plot` is (name, data URI, caption) of the plot shown beside the numbers."""
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
