"""`sami generate`: self-generate SAMI training samples (samples.jsonl) with a policy model."""

from __future__ import annotations

import argparse

from sami.errors import SamiInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queries", required=True, help="query file (.jsonl with id, query) or a bundled name")
    parser.add_argument(
        "--subset", help="meta['subset'] for every query (helpful/harmless; the paper-dialogue scheme reads it)"
    )
    parser.add_argument("--constitutions", required=True, help="constitution file or bundled name (e.g. hh_opus)")
    parser.add_argument(
        "--scheme",
        default="uniform",
        choices=["uniform", "paper-dialogue", "paper-summarization", "diverse"],
        help="how the C constitutions of a query are drawn (default: uniform)",
    )
    parser.add_argument("--n-constitutions", type=int, default=2, help="C: constitutions per query (default 2)")
    parser.add_argument("--mode", default="train", choices=["train", "eval", "heldout"], help="principle pool")
    parser.add_argument("--model", default="default", help="the policy: 'default', a folder, a GGUF or a hub id")
    parser.add_argument("--out", required=True, help="output file, e.g. runs/x/iter-1/samples.jsonl")
    parser.add_argument("--task", default="dialogue", choices=["dialogue", "summarization"], help="prompt template")
    parser.add_argument("--style", default="base", choices=["base", "chat"], help="plain prompts or chat template")
    parser.add_argument("--limit", type=int, help="only the first N queries")
    parser.add_argument("--max-new-tokens", type=int, help="response budget (default 350; 800 with --reasoning)")
    parser.add_argument(
        "--reasoning",
        action="store_true",
        help="chain-of-thought generation: reason about the constitution, then write the response after a "
        "marker line; only the response is kept (the reasoning goes to meta)",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of constitution draws and sampling (default 0)")
    parser.add_argument("--chunk-size", type=int, default=8, help="queries per generator call and write (default 8)")
    g = parser.add_argument_group("generation backend")
    g.add_argument("--backend", default="hf", choices=["hf", "openai", "vllm"], help="default: hf")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], help="hf/vllm weights dtype")
    g.add_argument("--batch-size", type=int, default=8, help="hf: prompts per batch (default 8)")
    g.add_argument("--base-url", help="openai: server URL, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--model-name", help="openai: model name on the server (default: the first it lists)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai: env var holding the API key")
    g.add_argument("--max-concurrency", type=int, default=8, help="openai: requests in flight (default 8)")
    g.add_argument("--max-retries", type=int, default=5, help="openai: retries per request (default 5)")
    g.add_argument("--timeout", type=float, default=120.0, help="openai: seconds per request (default 120)")
    g.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import logging

    from pydantic import ValidationError
    from rich.console import Console

    from sami.constitutions import load_constitutions
    from sami.data import BUNDLED_QUERIES, QuerySource, load_queries
    from sami.generation import GenerationSettings, make_generator
    from sami.models import load_tokenizer
    from sami.prompts import REASONING_MAX_NEW_TOKENS, FilterSettings, get_template
    from sami.sampling import generate_samples

    if args.max_new_tokens is None:
        args.max_new_tokens = REASONING_MAX_NEW_TOKENS if args.reasoning else 350
    if not getattr(args, "verbose", False):  # the HTTP client logs every request at INFO
        for name in ("httpx", "httpx2", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.limit is not None and args.limit < 1:
        raise SamiInputError(f"--limit: must be >= 1, got {args.limit}")
    source: dict = {"bundled" if args.queries in BUNDLED_QUERIES else "path": args.queries}
    if args.subset:
        source["subset"] = args.subset
    if args.limit:
        source["limit"] = args.limit
    try:
        queries = load_queries(QuerySource(**source))
        settings = GenerationSettings(
            backend=args.backend,
            model=args.model,
            dtype=args.dtype,
            batch_size=args.batch_size,
            base_url=args.base_url,
            model_name=args.model_name,
            api_key_env=args.api_key_env,
            max_concurrency=args.max_concurrency,
            max_retries=args.max_retries,
            timeout=args.timeout,
            tensor_parallel_size=args.tensor_parallel_size,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise SamiInputError(f"{loc}: {err['msg']}") from None
    cset = load_constitutions(args.constitutions)
    template = get_template(args.task, args.style)
    generator = make_generator(settings)
    tokenizer = getattr(generator, "tokenizer", None)
    if template.style == "chat" and tokenizer is None:
        tokenizer = load_tokenizer(args.model)
    console = Console(stderr=True)
    stats = generate_samples(
        generator,
        queries,
        cset,
        args.out,
        template=template,
        filters=FilterSettings.for_task(args.task),
        scheme=args.scheme,
        n_constitutions=args.n_constitutions,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        chunk_size=args.chunk_size,
        tokenizer=tokenizer,
        mode=args.mode,
        reasoning=args.reasoning,
        progress=not args.no_progress,
        console=console,
    )
    if args.no_progress:
        console.print(f"{stats['kept']} kept, {stats['dropped']} dropped of {stats['queries']} queries -> {args.out}")
    return 0
