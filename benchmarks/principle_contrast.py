"""Contrast of each checkable principle on a model: how much more often it follows the principle when asked than
when told the antithesis.

For every principle of a constitution file, each query is answered greedily twice with the run's chat prompt
(`get_template("dialogue", "chat")`), under a one-principle constitution stating the principle and under one
stating its antithesis; the principle's `check` decides each response. Contrast = adherence when asked −
adherence when told the antithesis, with 95% Wilson intervals on each side. Run from the project root:

    nice -n 10 .venv/bin/python benchmarks/principle_contrast.py --constitutions checkable_library --queries 12
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sami.constitutions import Constitution, load_constitutions  # noqa: E402
from sami.data import load_queries  # noqa: E402
from sami.evaluation.adherence import wilson_interval  # noqa: E402
from sami.generation import parse_generation  # noqa: E402
from sami.generation.factory import make_generator  # noqa: E402
from sami.prompts import get_template  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--constitutions", default="checkable_library")
    parser.add_argument("--model", default="default")
    parser.add_argument("--queries", type=int, default=12, help="queries per principle (half helpful, half harmless)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--out", default="benchmarks/results/principle_contrast.json")
    args = parser.parse_args()
    cset = load_constitutions(args.constitutions)
    half = args.queries // 2
    queries = load_queries({"bundled": "hh_helpful_test", "limit": half}) + load_queries(
        {"bundled": "hh_harmless_test", "limit": args.queries - half}
    )
    template = get_template("dialogue", "chat")
    generator = make_generator(parse_generation(model=args.model, batch_size=args.batch_size))
    started = time.perf_counter()
    jobs = []  # (principle, positive?, query, prompt)
    for p in cset.principles:
        for positive in (True, False):
            c = Constitution(((p, positive),))
            jobs += [(p, positive, q, template.generation_prompt(c, q.query)) for q in queries]
    completions = generator.generate(
        [j[3] for j in jobs], max_new_tokens=args.max_new_tokens, temperature=0.0, stop=template.stop or None
    )
    records = [
        {"principle": jp.name, "form": "principle" if positive else "antithesis", "query_id": q.id,
         "response": template.postprocess(c.text)}
        for (jp, positive, q, _), c in zip(jobs, completions, strict=True)
    ]  # fmt: skip
    rows = {}
    for p in cset.principles:
        hits = {True: [], False: []}
        for (jp, positive, _, _), c in zip(jobs, completions, strict=True):
            if jp.name == p.name:
                hits[positive].append(bool(p.holds(template.postprocess(c.text), True)))
        asked, told = hits[True], hits[False]
        a, t = sum(asked) / len(asked), sum(told) / len(told)
        rows[p.name] = {
            "n": len(asked), "asked": a, "asked_ci": wilson_interval(sum(asked), len(asked)),
            "antithesis": t, "antithesis_ci": wilson_interval(sum(told), len(told)), "contrast": a - t,
        }  # fmt: skip
        print(f"{p.name:14s} asked {a:.2f}  antithesis {t:.2f}  contrast {a - t:+.2f}", flush=True)
    seconds = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "seconds": round(seconds, 1), "by_principle": rows},
                                         indent=2) + "\n")  # fmt: skip
    responses_path = Path(args.out).with_suffix(".responses.jsonl")
    responses_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"{len(jobs)} responses in {seconds:.0f} s -> {args.out}, {responses_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
