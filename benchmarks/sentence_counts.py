"""How often the offline punkt sentence count (IFEval's, `sami.ifeval.text.count_sentences`) disagrees with
IFEval's regex splitter (`count_sentences_regex`, the counter `sami.checks` used before punkt) on real responses.

Reads JSONL files with a `response` field (e.g. `sami benchmark ifeval`'s responses.jsonl) and prints the share of
responses whose counts differ, the share where the default run's `brief` check (fewer than 2 sentences) flips, and
a few examples. Run from the project root:

    .venv/bin/python benchmarks/sentence_counts.py runs/ifeval-base/responses.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sami.ifeval.text import count_sentences, count_sentences_regex  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--examples", type=int, default=3)
    args = parser.parse_args()
    responses = [
        json.loads(line)["response"] for f in args.files for line in open(f, encoding="utf-8") if line.strip()
    ]
    pairs = [(count_sentences(r), count_sentences_regex(r), r) for r in responses if r.strip()]
    differ = [p for p in pairs if p[0] != p[1]]
    brief = [p for p in pairs if (p[0] < 2) != (p[1] < 2)]
    mean_abs = sum(abs(a - b) for a, b, _ in pairs) / len(pairs)
    print(f"{len(pairs)} non-blank responses: counts differ in {len(differ)} ({len(differ) / len(pairs):.1%}), "
          f"mean |punkt - regex| = {mean_abs:.2f} sentences; the 'fewer than 2' verdict differs in {len(brief)} "
          f"({len(brief) / len(pairs):.1%})")  # fmt: skip
    for a, b, r in differ[: args.examples]:
        print(f"  punkt {a}, regex {b}: {r[:160]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
