"""sami: Self-Supervised Alignment with Mutual Information (Fränken et al., NeurIPS 2024).

The public names are imported lazily, so `import sami` (and the `sami` command's help) does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "sami_loss": "sami.loss",
    "SAMILossOutput": "sami.loss",
    "paper_mutual_information": "sami.loss",
    "logprob_matrix": "sami.logprobs",
    "batched_logprob_matrices": "sami.logprobs",
    "SAMIConfig": "sami.sami_config",
    "SAMITrainer": "sami.trainer",
    "Principle": "sami.constitutions",
    "Constitution": "sami.constitutions",
    "ConstitutionSet": "sami.constitutions",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'sami' has no attribute {name!r}")
