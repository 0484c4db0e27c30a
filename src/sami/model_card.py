"""The model card of an exported checkpoint: `README.md` with the Hub's metadata and how the model was made.

The metadata block is `huggingface_hub`'s `ModelCardData` (`base_model`, `library_name`, `pipeline_tag`, `tags`,
`datasets`, `license` where known, and `model-index` results built from `EvalResult`s of the run's measured numbers
at the exported iteration: win rates against each baseline, adherence to the checkable principles, the paper's
MI). The body holds the constitution (principles and antitheses), the SAMI settings, the iteration, the evidence
tables of the run's report up to that iteration, and how to load the model. Nothing is recomputed: every number
comes from the run folder (`sami.report.summary.build_summary`).
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from sami.report.render import table_markdown
from sami.report.tables import adherence_table, comparison_table, metrics_table, win_rates_table
from sami.run_files import EvaluationSummary, Summary, as_summary

DEFAULT_BASE = ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
# Bundled query sets -> the hub dataset they are slices of (sami/assets/ATTRIBUTION.md).
BUNDLED_DATASETS = {"hh_": "Anthropic/hh-rlhf", "tldr_": "openai/summarize_from_feedback"}
METHOD_NAMES = {"sami": "SAMI", "dpo": "DPO", "sft": "SFT"}


def base_model(policy: str | None) -> tuple[str | None, str | None]:
    """`(hub id, licence)` of the run's π₀ where known: the bundled default, or a hub id; None for local files."""
    if policy in (None, "", "default"):
        return DEFAULT_BASE
    if policy.startswith((".", "/", "~")) or policy.endswith(".gguf") or policy.count("/") != 1:
        return None, None
    return policy, None


def datasets_of(config: dict) -> list[str]:
    """Hub dataset ids of the run's training and evaluation queries (bundled slices name their source)."""
    out: list[str] = []
    data = config.get("data") or {}
    for source in [*(data.get("train") or []), *(data.get("eval") or [])]:
        name = None
        if source.get("dataset") and source["dataset"].count("/") == 1 and not source["dataset"].startswith("."):
            name = source["dataset"]
        for prefix, hub in BUNDLED_DATASETS.items():
            if (source.get("bundled") or "").startswith(prefix):
                name = hub
        if name and name not in out:
            out.append(name)
    return out


def _eval_dataset(config: dict) -> tuple[str, str]:
    """`(dataset type, display name)` of the evaluation queries."""
    data = config.get("data") or {}
    sources = data.get("eval") or []
    names = [s.get("bundled") or s.get("dataset") or s.get("path") or "?" for s in sources]
    hubs = datasets_of({"data": {"eval": sources}})
    limit = data.get("eval_limit")
    label = ", ".join(names) + (f" (first {limit} each)" if limit else "")
    return (hubs[0] if len(hubs) == 1 else "sami-eval-queries"), label


def eval_results(entry: EvaluationSummary, config: dict) -> list:
    """`huggingface_hub.EvalResult`s of one evaluated model (an iteration entry of the summary)."""
    dataset_type, dataset_name = _eval_dataset(config)
    common = {"task_type": "text-generation", "task_name": "Constitution following", "dataset_type": dataset_type}
    common |= {"dataset_name": dataset_name, "dataset_split": "test"}
    results = []
    for baseline, wr in sorted(entry.win_rates.items()):
        if wr.win_rate is not None:
            name = f"win rate vs {baseline} ({_or_unknown(wr.n)} queries, judge: {_judge(config)})"
            results.append(EvalResult(metric_type="win_rate", metric_value=round(100 * wr.win_rate, 2),
                                      metric_name=name, **common))  # fmt: skip
    adherence = entry.adherence
    for key, label in (("positive", "under the principles"), ("antithesis", "under the antitheses")):
        value = getattr(adherence, key, None)
        if value is not None:
            name = f"adherence {label} (all checkable principles, {_or_unknown(adherence.n)} responses)"
            results.append(EvalResult(metric_type="adherence", metric_value=round(value, 4),
                                      metric_name=name, **common))  # fmt: skip
    if entry.mi is not None:
        results.append(EvalResult(metric_type="mutual_information", metric_value=round(entry.mi, 3),
                                  metric_name="MI (the paper's estimate, summed log-probs)", **common))  # fmt: skip
    return results


def _or_unknown(n: int | None) -> int | str:
    return "?" if n is None else n


def _judge(config: dict) -> str:
    judge = ((config.get("evaluation") or {}).get("judge")) or {}
    return str(judge.get("model_name") or judge.get("kind") or "?")


def _principles(summary: Summary) -> list[str]:
    lines = ["| principle | text | antithesis |", "|---|---|---|"]
    for p in summary.run.constitutions.principles:
        cells = [p.name, p.principle, p.antithesis]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return lines


def _settings(config: dict, t: int, method: str) -> list[str]:
    sampling, training = config.get("sampling") or {}, config.get("training") or {}
    iters, prompts, data = config.get("iterations") or {}, config.get("prompts") or {}, config.get("data") or {}
    steps = iters.get("steps") or []
    rows = [
        ("iteration exported", f"{t} of {iters.get('count')}"),
        ("optimizer steps per iteration", ", ".join(map(str, steps))),
        ("training starts from", iters.get("train_from")),
        ("constitution scheme, C", f"{sampling.get('scheme')}, {sampling.get('n_constitutions')}"),
        ("response budget (tokens)", sampling.get("max_new_tokens")),
        ("prompts", f"{prompts.get('task')}, {prompts.get('style')} style"),
        ("queries per iteration (per source)", data.get("train_per_iteration")),
        ("learning rate, optimizer", f"{training.get('learning_rate')}, {training.get('optim')}"),
        ("batch (queries per device step)", training.get("per_device_train_batch_size")),
        ("log-prob normalisation, EOS rule", f"{training.get('logprob_normalize')}, {training.get('eos')}"),
        ("seed", config.get("seed")),
    ]
    if method != "sami":
        settings = (config.get("comparisons") or {}).get(method) or {}
        rows.insert(0, (f"{METHOD_NAMES[method]} settings", ", ".join(f"{k}: {v}" for k, v in settings.items())))
    return ["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def card_metadata(
    summary: Summary | dict, t: int, *, method: str = "sami", license: str | None = None, model_name: str
):
    """The card's `ModelCardData`."""
    summary = as_summary(summary)
    config = summary.config
    base, known_license = base_model(summary.run.model)
    entry = _entry(summary, t, method)
    tags = ["sami", "alignment", "constitutional-ai", "mutual-information", "self-supervised"]
    if method != "sami":
        tags += [method, "trl"]
    return ModelCardData(
        base_model=base,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license or known_license,
        tags=tags,
        datasets=datasets_of(config) or None,
        model_name=model_name,
        eval_results=eval_results(entry, config) or None,
    )


def _entry(summary: Summary, t: int, method: str) -> EvaluationSummary:
    it = next(i for i in summary.iterations if i.iteration == t)
    return it if method == "sami" else it.comparisons[method]


def card_text(
    summary: Summary | dict, t: int, *, method: str = "sami", license: str | None = None, model_name: str
) -> str:
    """The whole `README.md`: the metadata block and the body."""
    summary = as_summary(summary)
    data = card_metadata(summary, t, method=method, license=license, model_name=model_name)
    config, run = summary.config, summary.run
    upto = summary.model_copy(update={"iterations": [i for i in summary.iterations if i.iteration <= t]})
    who = METHOD_NAMES[method]
    base = data.base_model or Path(str(run.model)).name  # a local folder: its name, not the whole path
    lines = [
        f"# {model_name}",
        "",
        f"`{base}` aligned to a written constitution"
        + (
            " by **SAMI** (Self-Supervised Alignment with Mutual Information; Fränken et al., NeurIPS 2024, "
            "[arXiv 2404.14313](https://arxiv.org/abs/2404.14313)): no preference labels and no demonstrations. "
            "The model was finetuned so that the responses it wrote under each constitution are more likely under "
            "that constitution than under the others (a lower bound on the conditional mutual information between "
            "constitution and response)."
            if method == "sami"
            else f" — the **{who}** comparison model of a SAMI run: trained by TRL on the same self-generated "
            f"samples as SAMI's iteration {t}, from the same starting model, for the same steps."
        ),
        "",
        f"Made with `sami` (the run `{run.name}`, iteration {t}).",
        "",
        "## Constitution",
        "",
        *_principles(summary),
        "",
        f"## {'SAMI' if method == 'sami' else who} settings",
        "",
        *_settings(config, t, method),
        "",
        "The run's whole resolved config is `sami_config.yaml` beside this card (no secrets), the constitution file "
        "`constitutions.json`.",
        "",
        "## Evidence (measured by the run; iterations up to the exported one)",
    ]
    tables = [metrics_table(upto), win_rates_table(upto), adherence_table(upto)]
    if method != "sami":
        tables.append(comparison_table(upto, method))
    for table in tables:
        if table is not None:
            lines += [
                line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in table_markdown(table)
            ]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")',
        "```",
        "",
        "The evidence above is this run's own, on its evaluation queries and with its judge; read the intervals.",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n").content
