"""`JudgeSettings`: who judges and how (the `evaluation.judge` section of a run config).

One settings class per judge kind, chosen by `kind` (default `local`): `ApiJudgeSettings` (an OpenAI-compatible
endpoint: `sami.endpoint.EndpointSettings` plus the answer budget and temperature), `LocalJudgeSettings` (an HF
model) and `RulesJudgeSettings` (the principles' checks, nothing else to set). The fields stay flat in YAML; a
field of another kind (`batch_size` under `kind: api`) is refused in one line naming it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from sami.cli_settings import refuse_foreign_fields, settings_union
from sami.endpoint import EndpointSettings
from sami.evaluation.judge_prompts import JUDGE_PROMPT, LOCAL_JUDGE_PROMPT, PRESETS

KIND_DESCRIPTION = (
    "'api': an OpenAI-compatible chat endpoint; 'local': an HF model's next-token odds; 'rules': the principles' "
    "checks (no model)"
)


class _Judge(BaseModel):
    """What every kind of judge has: its kind, and the refusal of fields of other kinds."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _only_own_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in PRESETS:  # a preset fills the fields it names not given
            preset = {k: v for k, v in PRESETS[data["preset"]].items() if k in cls.model_fields}
            data = {**preset, **{k: v for k, v in data.items() if v is not None or k == "preset"}}
        return refuse_foreign_fields(cls, data, "kind", KINDS)

    def prompt_text(self) -> str | None:
        """The judge prompt template this judge fills (None for the rules judge, which reads no prompt)."""
        return None

    def identity(self) -> dict:
        """The settings that decide verdicts, written as `"judge"` into every judgment record and metrics.json:
        the kind, the model (local: reference and dtype; api: model name and base URL), the sha256 of the prompt
        template actually used, and the protocol (temperature and answer budget for api, both_orders, seed,
        tie_band). Two judgments were given by the same judge exactly when their identities are equal; never
        holds a key or concurrency/timeout settings (they do not change verdicts)."""
        return {"kind": "rules", "checks": "the positive constitution's principle checks (sami.checks)"}


class RulesJudgeSettings(_Judge):
    """`kind: rules`: the positive constitution's checks decide; no model, no prompt, order plays no part."""

    kind: Literal["rules"] = Field("rules", description=KIND_DESCRIPTION)


class _ModelJudge(_Judge):
    """A judge that reads a prompt (api, local): its protocol."""

    both_orders: bool = Field(False, description="judge both orders (A/B swapped); a disagreement is a tie")
    seed: int = Field(0, description="seed of the per-item order and principle shuffle")
    tie_band: float = Field(1e-3, ge=0.0, lt=0.5, description="a tie when |P(model wins) − 0.5| < tie_band")
    prompt: str | None = Field(
        None, description="custom judge prompt with {constitution} {query} {response_a} {response_b}"
    )
    system: str | None = Field(None, description="system message of the judge's chat (None: none)")
    preset: Literal["paper"] | None = Field(
        None,
        description="'paper': the authors' judge protocol (api judge, system message, shuffled principles, seeded "
        "A/B order, a short comparison then the verdict, temperature 0, 200 tokens); fields given beside it win",
    )

    def prompt_text(self) -> str | None:
        return self.prompt or (LOCAL_JUDGE_PROMPT if self.kind == "local" else JUDGE_PROMPT)

    def model_identity(self) -> dict:
        """The judge model's part of `identity()`."""
        raise NotImplementedError

    def protocol_identity(self) -> dict:
        """The kind-specific protocol part of `identity()` (api: temperature and answer budget)."""
        return {}

    def identity(self) -> dict:
        prompt = self.prompt_text() or ""
        if self.system:
            prompt = f"system: {self.system}\n\n{prompt}"
        out: dict = {"kind": self.kind, "preset": self.preset, **self.model_identity()}
        out["prompt_sha256"] = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        out.update(self.protocol_identity())
        out.update(both_orders=self.both_orders, seed=self.seed, tie_band=self.tie_band)
        return out


class LocalJudgeSettings(_ModelJudge):
    """`kind: local` (the default): an HF model's next-token odds of "A" and "B"."""

    kind: Literal["local"] = Field("local", description=KIND_DESCRIPTION)
    model: str = Field(
        "default", description="local judge: model reference ('default', a folder, a GGUF file, a cached hub id)"
    )
    dtype: str | None = Field(None, description="local judge: weights dtype (default float32)")
    batch_size: int = Field(4, ge=1, description="local judge: prompts per forward pass")

    def model_identity(self) -> dict:
        return {"model": self.model, "dtype": self.dtype}


class ApiJudgeSettings(_ModelJudge, EndpointSettings):
    """`kind: api`: a judge model behind an OpenAI-compatible chat endpoint (the `EndpointSettings` fields)."""

    kind: Literal["api"] = Field("api", description=KIND_DESCRIPTION)
    max_tokens: int = Field(256, ge=1, description="api judge: answer budget in tokens")
    temperature: float = Field(0.0, ge=0.0, description="api judge: sampling temperature (0 as in the paper)")
    max_retries: int = Field(
        2,
        ge=0,
        description="retries per request on 408/409/429/5xx, connection errors, timeouts; the judge's default is 2, "
        "not the endpoint's 5: a request that still fails is recorded as a failed verdict (counted as a tie and "
        "reported) instead of stopping the stage, and finished runs' stage keys hold 2",
    )

    def model_identity(self) -> dict:
        return {"model": self.model_name, "base_url": self.base_url}

    def protocol_identity(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


KINDS: dict[str, type[_Judge]] = {"api": ApiJudgeSettings, "local": LocalJudgeSettings, "rules": RulesJudgeSettings}

# Who judges and how; the defaults give the cheap `local` judge on the bundled default model.
JudgeSettings = settings_union("kind", "local", KINDS, PRESETS)
_ADAPTER: TypeAdapter = TypeAdapter(JudgeSettings)


def parse_judge(**fields: Any) -> LocalJudgeSettings | ApiJudgeSettings | RulesJudgeSettings:
    """The settings of the judge `fields["kind"]` names (default local; a preset may name it), validated."""
    return _ADAPTER.validate_python(fields)
