"""`JudgeSettings`: who judges and how (the `evaluation.judge` section of a run config)."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sami.evaluation.judge_prompts import JUDGE_PROMPT, LOCAL_JUDGE_PROMPT, PRESETS
from sami.settings import ENV_VAR_NAME


class JudgeSettings(BaseModel):
    """Who judges and how. The defaults give the cheap `local` judge on the bundled default model."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["api", "local", "rules"] = Field(
        "local",
        description="'api': an OpenAI-compatible chat endpoint; 'local': an HF model's next-token odds; "
        "'rules': the principles' checks (no model)",
    )
    model: str = Field(
        "default", description="local judge: model reference ('default', a folder, a GGUF file, a cached hub id)"
    )
    dtype: str | None = Field(None, description="local judge: weights dtype (default float32)")
    batch_size: int = Field(4, ge=1, description="local judge: prompts per forward pass")
    base_url: str | None = Field(
        None, description="api judge: endpoint base URL, e.g. http://127.0.0.1:8000/v1 (None = the OpenAI API)"
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        pattern=ENV_VAR_NAME,
        description="api judge: environment variable holding the API key (its name, not the key)",
    )
    model_name: str | None = Field(None, description="api judge: model name at the endpoint, e.g. gpt-4-0613")
    max_tokens: int = Field(256, ge=1, description="api judge: answer budget in tokens")
    temperature: float = Field(0.0, ge=0.0, description="api judge: sampling temperature (0 as in the paper)")
    max_concurrency: int = Field(8, ge=1, description="api judge: requests in flight")
    timeout: float = Field(120.0, gt=0, description="api judge: seconds per request")
    max_retries: int = Field(2, ge=0, description="api judge: retries before a request is recorded as failed")
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

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        """A preset fills the fields it names that are not given."""
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            data = {**PRESETS[data["preset"]], **{k: v for k, v in data.items() if v is not None or k == "preset"}}
        return data

    def prompt_text(self) -> str | None:
        """The judge prompt template this judge fills (None for the rules judge, which reads no prompt)."""
        if self.kind == "rules":
            return None
        return self.prompt or (LOCAL_JUDGE_PROMPT if self.kind == "local" else JUDGE_PROMPT)

    def identity(self) -> dict:
        """The settings that decide verdicts, written as `"judge"` into every judgment record and metrics.json:
        the kind, the model (local: reference and dtype; api: model name and base URL), the sha256 of the prompt
        template actually used, and the protocol (temperature and answer budget for api, both_orders, seed,
        tie_band). Two judgments were given by the same judge exactly when their identities are equal; never
        holds a key or concurrency/timeout settings (they do not change verdicts)."""

        if self.kind == "rules":
            return {"kind": "rules", "checks": "the positive constitution's principle checks (sami.checks)"}
        prompt = self.prompt_text() or ""
        if self.system:
            prompt = f"system: {self.system}\n\n{prompt}"
        out: dict = {"kind": self.kind, "preset": self.preset}
        if self.kind == "api":
            out.update(model=self.model_name, base_url=self.base_url)
        else:
            out.update(model=self.model, dtype=self.dtype)
        out["prompt_sha256"] = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        if self.kind == "api":
            out.update(temperature=self.temperature, max_tokens=self.max_tokens)
        out.update(both_orders=self.both_orders, seed=self.seed, tie_band=self.tie_band)
        return out
