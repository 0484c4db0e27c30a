"""`EndpointSettings`: how sami reaches an OpenAI-compatible server, declared once.

Every settings class that calls a server inherits these fields, so they stay flat in YAML and on the command line
(`generation.base_url`, `evaluation.judge.timeout`, `writer.model_name`): the `openai` generation backend
(`sami.generation.base.OpenAIGeneration`), the `api` judge (`sami.evaluation.judge_settings.ApiJudgeSettings`) and
the principle writer (`sami.run_config.WriterSettings`). `sami.openai_client.OpenAIClient.from_endpoint` builds the
client from them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sami.cli_settings import ENV_VAR_NAME

DEFAULT_MAX_RETRIES = 5


class EndpointSettings(BaseModel):
    """An OpenAI-compatible endpoint: where it is, the key's variable, the model, and how requests are retried."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(
        None, description="server URL, e.g. http://127.0.0.1:8000/v1 (None: $OPENAI_BASE_URL, else the OpenAI API)"
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        pattern=ENV_VAR_NAME,
        description="name of the environment variable holding the API key (never the key; a loopback server needs "
        "none)",
    )
    model_name: str | None = Field(
        None, description="model name on the server (None: the first model the server lists; the api judge needs it)"
    )
    max_concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout: float = Field(120.0, gt=0, description="seconds per request before it counts as failed")
    max_retries: int = Field(
        DEFAULT_MAX_RETRIES, ge=0, description="retries per request on 408/409/429/5xx, connection errors, timeouts"
    )
    retry_backoff: float = Field(1.0, ge=0, description="seconds before the first retry; doubles each retry")
    retry_max_backoff: float = Field(30.0, ge=0, description="cap on the wait between retries (seconds)")
