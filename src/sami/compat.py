"""Training settings whose name differs between the supported transformers versions, translated to the installed
version's spelling (or refused in one line naming both).

transformers 5.2x renamed `gradient_checkpointing(_kwargs)` to `activation_checkpointing(_kwargs)`, keeping the
old names as deprecated aliases; 5.20 (what vLLM 0.33 installs) has only the old ones. A config may use either
spelling: the installed version's own name is used (the new one where it exists, so no deprecation warning), and
both spellings with different values are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sami.errors import SamiInputError

# (old name, new name): the same TrainingArguments setting under two transformers versions
RENAMED = (
    ("gradient_checkpointing", "activation_checkpointing"),
    ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
)


def translate_trainer_args(args: dict[str, Any], known: Iterable[str], *, where: str) -> dict[str, Any]:
    """`args` with renamed settings under the name the installed transformers knows (`known`: its fields)."""

    known = set(known)
    out = dict(args)
    for old, new in RENAMED:
        given = [name for name in (old, new) if name in out]
        if not given:
            continue
        if len(given) == 2 and out[old] != out[new]:
            raise SamiInputError(
                f"{where}: {old!r} ({out[old]!r}) and {new!r} ({out[new]!r}) are one setting under two transformers "
                "versions' names; give one"
            )
        value = out.pop(given[-1])
        out.pop(given[0], None)
        target = new if new in known else old if old in known else None
        if target is None:
            raise SamiInputError(f"{where}: transformers {transformers_version()} has neither {old!r} nor {new!r}")
        out[target] = value
    return out


def transformers_version() -> str:
    import transformers  # light to import; kept out of module import time like the rest of sami's config

    return transformers.__version__
