"""IFEval (Zhou et al. 2023) offline: its 25 verifiable instructions, its strict/loose protocol and the benchmark.

- `sami.ifeval.text`: counting (punkt sentences, NLTK word tokens, langdetect), offline.
- `sami.ifeval.instructions`: the 25 checkers and their kwargs (`REGISTRY`).
- `sami.ifeval.evaluation`: the bundled prompts, strict/loose scoring and the four accuracies.
- `sami.ifeval.benchmark`: `sami benchmark ifeval` (generate or read responses, score, write IFEval's files).
"""

from sami.ifeval.evaluation import IFEvalInput, accuracies, bundled_inputs_path, load_inputs, loose_variants, score
from sami.ifeval.instructions import REGISTRY, follows, parse_kwargs

__all__ = [
    "REGISTRY", "IFEvalInput", "accuracies", "bundled_inputs_path", "follows", "load_inputs", "loose_variants",
    "parse_kwargs", "score",
]  # fmt: skip
