"""`sami evaluate`: compare a model against baselines (win rates) and measure its MI and response lengths."""

from __future__ import annotations

import argparse


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
    parser.add_argument("--queries", help="evaluation queries: a bundled name (hh_helpful_test, ...) or a file")
    parser.add_argument("--constitutions", help="constitution file or bundled name (hh_opus, tldr_opus, ...)")
    parser.add_argument("--out", required=True, help="output folder (resumes what is already there)")
    parser.add_argument("--config", help="a YAML file with evaluation settings (EvaluationSettings fields)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N queries")
    parser.add_argument("--label", help="the model's name in the records (default: --model)")
    parser.add_argument("--task", choices=["dialogue", "summarization"], help="default: the constitutions' task")
    parser.add_argument("--style", choices=["base", "chat"], help="prompt style of the evaluated model (default base)")
    parser.add_argument("--scheme", help="constitution scheme for the MI metrics (default uniform)")
    parser.add_argument("--n-constitutions", type=int, help="C for the MI metrics (default 2)")
    parser.add_argument("--max-new-tokens", type=int, help="response budget (default 350, the paper's)")
    parser.add_argument("--batch-size", type=int, help="generation batch size (default 8)")
    parser.add_argument("--chunk-size", type=int, help="queries between two writes to disk (default 8)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], help="weights dtype")
    parser.add_argument("--device", help="torch device (default: cuda when available)")
    parser.add_argument("--seed", type=int, help="seed of constitutions, judge order and bootstrap (default 0)")
    parser.add_argument("--no-judge", action="store_true", help="skip baselines and judging (intrinsic metrics only)")
    parser.add_argument("--no-intrinsic", action="store_true", help="skip the MI and length metrics")
    judge = parser.add_argument_group("judge")
    judge.add_argument(
        "--judge",
        choices=["local", "api", "rules"],
        help="local: an HF model's P(A) vs P(B); api: a server; rules: the principles' checks (no model)",
    )
    judge.add_argument("--judge-model", help="local judge model (default: the bundled default model)")
    judge.add_argument("--judge-base-url", help="api judge endpoint, e.g. http://127.0.0.1:8000/v1")
    judge.add_argument("--judge-model-name", help="api judge model name at the endpoint, e.g. gpt-4-0613")
    judge.add_argument("--judge-api-key-env", help="environment variable holding the judge's API key")
    judge.add_argument("--both-orders", action="store_true", help="judge both orders; a disagreement is a tie")


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    from sami.errors import SamiInputError

    out: dict[str, str] = {}
    for value in values:
        name, sep, ref = value.partition("=")
        if not sep or not name or not ref:
            raise SamiInputError(f"{flag}: expected NAME=VALUE, got {value!r}")
        out[name] = ref
    return out


def settings_from_args(args: argparse.Namespace):
    """EvaluationSettings from an optional YAML file and the command-line flags (flags win)."""
    import yaml
    from pydantic import ValidationError

    from sami.errors import SamiInputError
    from sami.evaluation.evaluate import EvaluationSettings

    raw: dict = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                raw = yaml.safe_load(f) or {}
        except OSError as e:
            raise SamiInputError(f"{args.config}: cannot read ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise SamiInputError(f"{args.config}: invalid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise SamiInputError(f"{args.config}: expected a mapping of evaluation settings")
    flags = {
        "queries": args.queries,
        "constitutions": args.constitutions,
        "limit": args.limit,
        "task": args.task,
        "style": args.style,
        "scheme": args.scheme,
        "n_constitutions": args.n_constitutions,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "dtype": args.dtype,
        "device": args.device,
        "seed": args.seed,
    }
    raw.update({k: v for k, v in flags.items() if v is not None})
    if args.no_intrinsic:
        raw["intrinsic"] = False
    baselines = _pairs(args.baseline, "--baseline")
    styles = _pairs(args.baseline_style, "--baseline-style")
    if baselines or "baselines" not in raw:
        raw["baselines"] = {name: {"model": ref} for name, ref in (baselines or {"base": "default"}).items()}
    for name, style in styles.items():
        spec = raw["baselines"].get(name)
        if spec is None:
            raise SamiInputError(f"--baseline-style: no baseline named {name!r}")
        if isinstance(spec, str):
            spec = {"model": spec}
        raw["baselines"][name] = {**spec, "style": style}
    judge = dict(raw.get("judge") or {})
    judge_flags = {
        "kind": args.judge,
        "model": args.judge_model,
        "base_url": args.judge_base_url,
        "model_name": args.judge_model_name,
        "api_key_env": args.judge_api_key_env,
    }
    judge.update({k: v for k, v in judge_flags.items() if v is not None})
    if args.both_orders:
        judge["both_orders"] = True
    if args.seed is not None:
        judge.setdefault("seed", args.seed)
    raw["judge"] = judge
    try:
        return EvaluationSettings.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        raise SamiInputError(f"{args.config or 'evaluate'}: {where}: {err['msg']}") from None


def run(args: argparse.Namespace) -> int:
    from sami.errors import SamiInputError
    from sami.evaluation.evaluate import run_evaluation

    settings = settings_from_args(args)
    if settings.queries is None:
        raise SamiInputError("--queries: give the evaluation queries (a bundled name or a file)")
    if settings.constitutions is None:
        raise SamiInputError("--constitutions: give a constitution file or bundled name")
    run_evaluation(settings, args.model, args.out, model_label=args.label, judge=not args.no_judge)
    return 0
