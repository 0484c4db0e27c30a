"""The self-contained report page (`report/index.html`): the style from `report.css` inlined, plots as data URIs,
no external resources."""

from __future__ import annotations

import base64
import time
from importlib.resources import files
from typing import Any

import yaml

from sami.report.answer import render_answer
from sami.report.render import escape, gaps, table_html
from sami.report.summary import number
from sami.report.tables import all_tables
from sami.run_files import Summary, as_summary

# Marks each <img> with whether it decoded (a headless browser test reads the DOM).
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    var good = imgs[i].complete && imgs[i].naturalWidth > 0;
    imgs[i].setAttribute("data-rendered", good ? "yes" : "no");
    if (good) ok++;
  }
  document.body.setAttribute("data-images-rendered", ok + "/" + imgs.length);
});
"""

PLOTS = {
    "mi": "Mutual information per iteration: the paper's metric (left) and the InfoNCE bound log C − loss (right).",
    "win_rate": "Win rate per iteration with 95% CI: raw (solid) and length-balanced (dashed); 0.5 = parity.",
    "length": "Mean response length under the positive and the negative constitutions.",
    "loss": "SAMI training loss per optimizer step, one line per iteration.",
    "ifeval": "IFEval accuracy per iteration (evaluation.benchmarks): prompt-level (solid) and instruction-level "
    "(dashed), strict and loose, ±1.96 standard errors.",
    "adherence": "Adherence per principle: fraction of responses following the principle under the positive "
    "constitution (solid) and following the antithesis under the antithesis constitution (dashed), 95% Wilson CI.",
}
PLOT_MISSING = {
    "mi": "no evaluation metrics yet",
    "win_rate": "no judgments yet",
    "length": "no evaluation metrics yet",
    "loss": "no training logs yet",
    "adherence": "no principle carries a check",
}
FOOTER = (
    "SAMI: Self-Supervised Alignment with Mutual Information (Fränken et al., NeurIPS 2024). MI (paper) = mean over "
    "queries of ℓ(y_j|c_j) − mean_k ℓ(y_j|c_k) with summed log-probs; InfoNCE bound = log C − symmetric InfoNCE loss."
)


def stylesheet() -> str:
    """The page's CSS (the package asset `sami/report/report.css`)."""
    return files("sami.report").joinpath("report.css").read_text(encoding="utf-8")


def _caption(name: str) -> str:
    if name.startswith("comparison-"):
        label = name.removeprefix("comparison-").upper()
        return (
            f"SAMI (solid) vs {label} (dashed) per iteration: win rate vs the base model and {label}'s head-to-head "
            f"rate vs SAMI (left, 95% CI); adherence under the positive constitution (right)."
        )
    return PLOTS[name]


def _header(summary: Summary) -> str:
    run = summary.run
    cons = run.constitutions
    principles = ", ".join(p.name for p in cons.principles)
    parts = (
        cons.source,
        cons.task and f"task: {cons.task}",
        principles and f"principles: {principles}",
        cons.scheme and f"scheme: {cons.scheme}",
        cons.n_constitutions and f"C = {cons.n_constitutions}",
    )
    done = [it.iteration for it in summary.iterations if it.mi is not None or it.win_rates]
    planned = run.planned_iterations
    progress = f"{len(done)} evaluated" + (f" of {planned + 1} (iterations 0..{planned})" if planned else "")
    rows = [
        ("model", run.model or "unknown"),
        ("constitutions", " · ".join(x for x in parts if x) or "unknown"),
        ("iterations", progress + (f"; steps {run.steps}" if run.steps else "")),
        ("started", run.started or "unknown"),
        ("last stage finished", run.finished or "—"),
        ("report written", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
    return f'<header><div class="inner"><h1>SAMI run: {escape(run.name)}</h1><dl>{dl}</dl></div></header>'


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def lead_plot(plots: dict[str, bytes | None]) -> str | None:
    """The plot shown with the answer at the top: adherence, else the win rate (None: neither exists)."""
    return next((name for name in ("adherence", "win_rate") if plots.get(name)), None)


def _plots(plots: dict[str, bytes | None], skip: str | None = None) -> str:
    figs = []
    for name, data in plots.items():
        if name == skip:
            continue
        caption = f"<figcaption>{escape(_caption(name))}</figcaption>"
        if data is None:
            figs.append(
                f"<figure><div class='empty'>{escape(PLOT_MISSING.get(name, 'nothing yet'))}</div>{caption}</figure>"
            )
            continue
        figs.append(f"<figure><img src='{_uri(data)}' alt='{escape(name)} plot'>{caption}</figure>")
    return f"<h2>Plots</h2><div class='plots'>{''.join(figs)}</div>"


def _response(title: str, text: Any, cls: str, extra: str = "", ctext: str | None = None) -> str:
    c = f"<div class='ctext'>{escape(ctext)}</div>" if ctext else ""
    head = f"<h4><span>{escape(title)}</span><span>{extra}</span></h4>"
    return f"<div class='resp {cls}'>{head}{c}<pre>{escape(text)}</pre></div>"


def _tokens(n: Any) -> str:
    return f" <span class='muted'>{escape(n)} tokens</span>" if number(n) is not None else ""


def _verdict(judgment: dict | None) -> str:
    win = number((judgment or {}).get("win"))
    if win is None:
        return ""
    word, cls = ("iteration wins", "win") if win == 1 else ("base wins", "loss") if win == 0 else ("tie", "")
    return f"<span class='tag {cls}'>judge: {word}</span>"


def _examples(examples: dict) -> str:
    parts = ["<h2>Sample responses</h2>", "<h3>Base model vs latest iteration (positive constitution)</h3>"]
    pairs = examples.get("base_vs_latest")
    if pairs:
        for pair in pairs["pairs"]:
            base, model = pair["base"], pair["model"]
            parts.append(
                f"<div class='card'><div class='query'>{escape(pair['query'])}</div>"
                "<div class='pair' style='grid-template-columns:1fr 1fr'>"
                + _response("base model", base.get("response", ""), "base", _tokens(base.get("num_tokens")))
                + _response(
                    f"iteration {pairs['iteration']}",
                    model.get("response", ""),
                    "pos",
                    _verdict(pair.get("judgment")) + _tokens(model.get("num_tokens")),
                )
                + "</div></div>"
            )
    else:
        parts.append("<div class='card empty'>no evaluated iteration with responses next to the base model yet</div>")
    cons = examples.get("constitutions")
    title = f" (iteration {cons['iteration']})" if cons else ""
    parts.append(f"<h3>Positive vs negative constitutions{title}</h3>")
    if cons:
        for row in cons["rows"]:
            cells = "".join(
                _response(c["label"], c["response"], "pos" if j == 0 else "neg", _tokens(c["num_tokens"]), c["text"])
                for j, c in enumerate(row["cells"])
            )
            parts.append(
                f"<div class='card'><div class='query'>{escape(row['query'])}</div>"
                f"<div class='pair' style='grid-template-columns:repeat({len(row['cells'])},1fr)'>{cells}</div></div>"
            )
    else:
        parts.append("<div class='card empty'>no eval/mi_responses.jsonl yet</div>")
    return "".join(parts)


def _principles(summary: Summary) -> str:
    principles = summary.run.constitutions.principles
    if not principles:
        return ""
    rows = "".join(
        f"<tr><td class=l><b>{escape(p.name)}</b></td><td class=l>{escape(p.principle)}</td>"
        f"<td class=l>{escape(p.antithesis)}</td></tr>"
        for p in principles
    )
    return (
        "<h2>Principles</h2><div class='card'><table><thead><tr><th class=l>name</th><th class=l>principle</th>"
        f"<th class=l>antithesis</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def render_html(summary: Summary | dict, plots: dict[str, bytes | None], examples: dict) -> str:
    """The whole report page."""
    summary = as_summary(summary)
    missing = gaps(summary)
    warn = ""
    if missing:
        items = "".join(f"<li>{escape(g)}</li>" for g in missing)
        warn = (
            "<div class='warn'><b>This run is incomplete or has unreadable files.</b> The report shows what exists."
            f"<ul>{items}</ul></div>"
        )
    config_yaml = yaml.safe_dump(summary.config, sort_keys=False, allow_unicode=True)
    lead = lead_plot(plots)
    body = (
        _header(summary)
        + "<main>"
        + warn
        + render_answer(summary, (lead, _uri(plots[lead]), _caption(lead)) if lead else None, examples)
        + "<h2 class='section'>Details</h2>"
        + "".join(table_html(t) for t in all_tables(summary))
        + _plots(plots, skip=lead)
        + _examples(examples)
        + _principles(summary)
        + "<h2>Config</h2><div class='card'><details><summary>config.yaml (secrets removed)</summary>"
        + f"<pre>{escape(config_yaml)}</pre></details></div>"
        + f"<footer>{escape(FOOTER)}</footer></main>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>SAMI run: {escape(summary.run.name)}</title><style>{stylesheet()}</style></head>"
        f"<body>{body}<script>{SCRIPT}</script></body></html>\n"
    )
