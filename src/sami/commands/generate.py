"""`sami generate`: self-generate SAMI training samples (samples.jsonl) with a policy model.

The sampling flags are generated from `SamplingSettings` and the backend flags from `GenerationSettings`
(`sami.cli_settings`); `--config FILE` is a YAML file of `SamplingSettings` fields that the flags override.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from sami.cli_settings import add_settings_arguments, load_settings, settings_overrides, validate
from sami.constitutions import load_constitutions
from sami.data import BUNDLED_QUERIES, QuerySource, load_queries
from sami.errors import SamiInputError
from sami.filters import FilterSettings
from sami.generation import GenerationSettings
from sami.models import load_tokenizer
from sami.prompts import get_template
from sami.query_formats import TRANSFORMS
from sami.sampling import SamplingSettings, generate_samples

# GenerationSettings fields `sami generate` exposes (the sampling ones come from SamplingSettings)
BACKEND_FIELDS = [
    "backend", "model", "dtype", "device", "batch_size", "base_url", "model_name", "api_key_env", "max_concurrency",
    "max_retries", "timeout", "tensor_parallel_size",
]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:

    parser.add_argument(
        "--queries",
        required=True,
        help="query file (.jsonl with id, query; other formats: --transform) or a bundled name",
    )
    parser.add_argument(
        "--subset", help="meta['subset'] for every query (helpful/harmless; the paper-dialogue scheme reads it)"
    )
    parser.add_argument(
        "--transform",
        choices=list(TRANSFORMS),
        help="read the queries from a format of the field: " + "; ".join(f"{k}: {v}" for k, v in TRANSFORMS.items()),
    )
    parser.add_argument("--constitutions", required=True, help="constitution file or bundled name (e.g. hh_opus)")
    parser.add_argument("--mode", default="train", choices=["train", "eval", "heldout"], help="principle pool")
    parser.add_argument("--out", required=True, help="output file, e.g. runs/x/iter-1/samples.jsonl")
    parser.add_argument("--task", default="dialogue", choices=["dialogue", "summarization"], help="prompt template")
    parser.add_argument("--style", default="base", choices=["base", "chat"], help="plain prompts or chat template")
    parser.add_argument("--limit", type=int, help="only the first N queries")
    parser.add_argument("--seed", type=int, default=0, help="seed of constitution draws and sampling (default 0)")
    parser.add_argument("--config", metavar="FILE", help="a YAML file of sampling settings (the flags win)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_settings_arguments(parser.add_argument_group("sampling"), SamplingSettings, key="sampling")
    g = parser.add_argument_group("generation backend")
    add_settings_arguments(g, GenerationSettings, key="generation", fields=BACKEND_FIELDS)


def run(args: argparse.Namespace) -> int:
    # the backends load torch: imported here, not at the top, so that `sami generate --help` answers at once
    from sami.generation import factory  # factory.make_generator: looked up at call time (tests patch it)

    if args.limit is not None and args.limit < 1:
        raise SamiInputError(f"--limit: must be >= 1, got {args.limit}")
    sampling = load_settings(SamplingSettings, args.config, settings_overrides(args, "sampling"))
    generation = validate(
        GenerationSettings,
        {
            **settings_overrides(args, "generation"),
            "max_new_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": args.seed,
        },
        source="flags",
    )
    source: dict = {"bundled" if args.queries in BUNDLED_QUERIES else "path": args.queries}
    if args.subset:
        source["subset"] = args.subset
    if args.transform:
        source["transform"] = args.transform
    if args.limit:
        source["limit"] = args.limit
    queries = load_queries(validate(QuerySource, source, source="--queries"))
    cset = load_constitutions(args.constitutions)
    template = get_template(args.task, args.style)
    generator = factory.make_generator(generation)
    tokenizer = getattr(generator, "tokenizer", None)
    if template.style == "chat" and tokenizer is None:
        tokenizer = load_tokenizer(getattr(generation, "model", "default"))  # openai: the bundled model's
    console = Console(stderr=True)
    stats = generate_samples(
        generator, queries, cset, args.out, sampling,
        template=template, filters=FilterSettings.for_task(args.task), seed=args.seed, tokenizer=tokenizer,
        mode=args.mode, progress=not args.no_progress, console=console,
    )  # fmt: skip
    if args.no_progress:
        console.print(f"{stats['kept']} kept, {stats['dropped']} dropped of {stats['queries']} queries -> {args.out}")
    return 0
