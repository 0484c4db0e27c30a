"""`sami evaluate`: compare a model against baselines (win rates) and measure its MI and response lengths."""

from __future__ import annotations

import argparse

from sami.cli_settings import add_settings_arguments, merge, read_yaml, settings_overrides, validate
from sami.errors import SamiInputError
from sami.evaluation.settings import BaselineSettings, EvaluationSettings

# other spellings of generated flags, kept from the hand-written parser
FLAGS = {"judge.kind": ["--judge", "--judge-kind"], "judge.both_orders": ["--both-orders", "--judge-both-orders"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("--model", required=True, help="the model to evaluate: a checkpoint folder, 'default', ...")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="a baseline to compare against (repeatable; default: base=default)",
    )
    parser.add_argument(
        "--baseline-style",
        action="append",
        default=[],
        metavar="NAME=STYLE",
        help="prompt style of a baseline: base or chat (e.g. instruct=chat for an instruction-tuned model)",
    )
    parser.add_argument("--out", required=True, help="output folder (resumes what is already there)")
    parser.add_argument("--config", metavar="FILE", help="a YAML file of evaluation settings (the flags win)")
    parser.add_argument("--label", help="the model's name in the records (default: --model)")
    parser.add_argument("--no-judge", action="store_true", help="skip baselines and judging (intrinsic metrics only)")
    add_settings_arguments(
        parser.add_argument_group("evaluation settings"),
        EvaluationSettings,
        key="evaluation",
        exclude=("baselines", "include_eos", "contrast", "contrast_limit", "ifeval_limit", "ifeval_max_new_tokens"),
        flags=FLAGS,
    )


def _pairs(values: list[str], flag: str) -> dict[str, str]:

    out: dict[str, str] = {}
    for value in values:
        name, sep, ref = value.partition("=")
        if not sep or not name or not ref:
            raise SamiInputError(f"{flag}: expected NAME=VALUE, got {value!r}")
        if name in out:
            raise SamiInputError(f"{flag}: {name!r} given twice ({out[name]!r} and {ref!r}); one value per name")
        out[name] = ref
    return out


def _with_baselines(settings, args: argparse.Namespace):
    """`--baseline NAME=MODEL` replaces the file's baselines (none anywhere: base=default); `--baseline-style
    NAME=STYLE` sets one baseline's prompt style."""

    baselines = dict(settings.baselines)
    given = _pairs(args.baseline, "--baseline")
    if given or "baselines" not in settings.model_fields_set:
        baselines = {name: BaselineSettings(model=ref) for name, ref in (given or {"base": "default"}).items()}
    for name, style in _pairs(args.baseline_style, "--baseline-style").items():
        spec = baselines.get(name)
        if spec is None:
            raise SamiInputError(f"--baseline-style: no baseline named {name!r}")
        spec = spec if isinstance(spec, BaselineSettings) else BaselineSettings(model=spec)
        baselines[name] = spec.model_copy(update={"style": style})
    return settings.model_copy(update={"baselines": baselines})


def build_settings(args: argparse.Namespace):
    """The `EvaluationSettings` of a `sami evaluate` command line: `--config FILE`, the flags on top."""

    raw = read_yaml(args.config) if args.config else {}
    overrides = settings_overrides(args, "evaluation")
    judge = {**(raw.get("judge") or {}), **(overrides.get("judge") or {})}
    if "seed" in overrides and "seed" not in (raw.get("judge") or {}) and judge.get("kind") != "rules":
        # the judge's order shuffle follows --seed unless the file or --judge-seed says otherwise
        overrides.setdefault("judge", {}).setdefault("seed", overrides["seed"])
    settings = validate(EvaluationSettings, merge(raw, overrides), source=args.config or "command line")
    return _with_baselines(settings, args)


def run(args: argparse.Namespace) -> int:
    # the evaluation loads torch: imported here, not at the top, so that `sami evaluate --help` answers at once
    from sami.evaluation.context import EvaluationInputs
    from sami.evaluation.evaluate import run_evaluation

    settings = build_settings(args)
    if settings.queries is None:
        raise SamiInputError("--queries: give the evaluation queries (a bundled name or a file)")
    if settings.constitutions is None:
        raise SamiInputError("--constitutions: give a constitution file or bundled name")
    run_evaluation(settings, args.model, args.out, EvaluationInputs(model_label=args.label, judge=not args.no_judge))
    return 0
