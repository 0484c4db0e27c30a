"""The shape the stage keys hash: every settings section as it was dumped before the per-backend/per-kind settings
classes and `EndpointSettings`, so finished runs keep their keys (tests/test_stage_key_pins.py).

`GenerationSettings` and `JudgeSettings` are unions now: a member dumps its own fields only, in its own order.
`legacy_shape` gives each section back the flat fields it had, in their order: a field the chosen member does
not have is hashed at its old default (it was ignored by that backend or judge, as it is now: refused unless
absent), and a field new to the section (`EndpointSettings`' retry backoff in the judge, its timeouts and retries
in the writer, `evaluation.generation`) is left out while at its default. The hashing dump (`sami.pipeline`) is the
only caller; the run's `config.yaml` is the plain dump.
"""

from __future__ import annotations

from typing import Any

from sami.endpoint import EndpointSettings

# the fields each section had, in order, with their defaults (frozen: this is history, not configuration)
GENERATION: dict[str, Any] = {
    "backend": "hf",
    "model": "default",
    "dtype": None,
    "device": None,
    "batch_size": 8,
    "prefill_batch_size": None,
    "share_prefix": True,
    "num_threads": None,
    "trust_remote_code": False,
    "base_url": None,
    "api_key_env": "OPENAI_API_KEY",
    "model_name": None,
    "server": None,
    "server_port": 8000,
    "server_timeout": 900.0,
    "max_concurrency": 8,
    "timeout": 120.0,
    "max_retries": 5,
    "retry_backoff": 1.0,
    "retry_max_backoff": 30.0,
    "extra_body": {},
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": 0.9,
    "max_model_len": None,
    "engine_kwargs": {},
    "max_new_tokens": 350,
    "temperature": 0.0,
    "top_p": 1.0,
    "seed": 0,
}
JUDGE: dict[str, Any] = {
    "kind": "local",
    "model": "default",
    "dtype": None,
    "batch_size": 4,
    "base_url": None,
    "api_key_env": "OPENAI_API_KEY",
    "model_name": None,
    "max_tokens": 256,
    "temperature": 0.0,
    "max_concurrency": 8,
    "timeout": 120.0,
    "max_retries": 2,
    "both_orders": False,
    "seed": 0,
    "tie_band": 1e-3,
    "prompt": None,
    "system": None,
    "preset": None,
}
WRITER: dict[str, Any] = {
    "task": None,
    "principles": None,
    "model": "default",
    "backend": "hf",
    "base_url": None,
    "model_name": None,
    "api_key_env": "OPENAI_API_KEY",
    "retries": 3,
}
_ENDPOINT_DEFAULTS = {name: info.default for name, info in EndpointSettings.model_fields.items()}


def _section(dumped: dict[str, Any] | None, legacy: dict[str, Any]) -> dict[str, Any] | None:
    """`dumped` (a member's `model_dump(mode="json")`) in the legacy field order, absent fields at their legacy
    default, new endpoint fields left out while at their default."""
    if dumped is None:
        return None
    out = {name: dumped.get(name, default) for name, default in legacy.items()}
    for name, value in dumped.items():
        if name not in legacy and not (name in _ENDPOINT_DEFAULTS and value == _ENDPOINT_DEFAULTS[name]):
            out[name] = value
    return out


def legacy_shape(data: dict[str, Any], *, exclude: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run config's `model_dump(mode="json", exclude=exclude)` with its generation, judge, baselines' generation
    and writer sections in their legacy shape (changed in place and returned); fields `exclude` names in a shaped
    section stay out."""
    data["generation"] = _section(data.get("generation"), GENERATION)
    evaluation = data.get("evaluation") or {}
    if "judge" in evaluation:
        evaluation["judge"] = _section(evaluation["judge"], JUDGE)
    if evaluation.get("generation", "") is None:
        del evaluation["generation"]  # new field (the evaluation's engine): out of the hash at its default
    for baseline in (evaluation.get("baselines") or {}).values():
        if isinstance(baseline, dict) and baseline.get("generation") is not None:
            baseline["generation"] = _section(baseline["generation"], GENERATION)
    if data.get("writer") is not None:
        data["writer"] = _section(data["writer"], WRITER)
    for section in ("generation", "writer"):
        names = (exclude or {}).get(section)
        if isinstance(names, set | frozenset) and isinstance(data.get(section), dict):
            for name in names:
                data[section].pop(name, None)
    return data
