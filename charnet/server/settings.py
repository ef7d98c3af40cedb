"""Server settings: one validated object, passed to uvicorn workers through the environment.

`charnet serve` builds `Settings` from its options; `create_app()` with no argument reads
them back from ``CHARNET_SERVE_SETTINGS`` (JSON), which is how ``--workers N`` hands them
to worker processes that uvicorn starts by import string. The API key never goes into
that JSON: it is read from ``CHARNET_API_KEY`` in every process, so it stays out of
command lines and logs.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from charnet.inference.request import MAX_CHARS

MAX_N = 128
"""The largest n (and number of prompts) any server takes, as OpenAI's API; --max-n is at
most this."""

SETTINGS_ENV = "CHARNET_SERVE_SETTINGS"
API_KEY_ENV = "CHARNET_API_KEY"


class Settings(BaseModel):
    """Everything a server process needs to know."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: dict[str, str] = Field(default_factory=dict, description="Model name -> checkpoint directory.")
    device: str = Field("cpu", description="Device the models run on.")
    max_concurrency: int = Field(64, ge=1, description="Sequences generated at once per model (its batches, "
                                 "divided among its engine processes).")
    max_queue: int = Field(256, ge=0, description="Sequences that may wait for a slot per model before 429.")
    max_chars_cap: int = Field(4096, ge=1, le=MAX_CHARS, description="Largest max_tokens / length a request may "
                                                                      "ask for.")
    max_n: int = Field(16, ge=1, le=MAX_N, description="Most choices (n) and prompts one request may ask for; "
                       "also the most rows one request holds at once when others wait.")
    max_prompt_chars: int = Field(32_768, ge=1, description="Longest prompt, in characters (400 above).")
    max_response_tokens: int = Field(1 << 18, ge=1, description="Largest response a request may ask for, in "
                                     "token entries: choices x (echoed prompt + max_tokens) x (1 + logprobs); "
                                     "for /v1/score, characters x (1 + top).")
    request_timeout: float = Field(600.0, gt=0, description="Seconds a request may wait and generate in all.")
    cache_mb: float = Field(64.0, ge=0, description="Prompt-state cache size per model, in MiB.")
    max_score_chars: int = Field(20_000, ge=2, description="Longest text /v1/score accepts, in characters.")
    max_body_bytes: int = Field(1 << 20, ge=1, description="Largest request body accepted (413 above).")
    threads: int | None = Field(None, ge=1, description="Torch threads of each model's engine processes (default: "
                                "every core, divided among --workers), divided among those with work; one while "
                                "requests arrive, where the model's steps give the same bits on one as on all.")
    engines: int | None = Field(None, ge=1, description="Engine processes per model, each request sent to the one "
                                "holding the fewest sequences (default: two on a CPU with two threads or more, "
                                "else one).")
    stream_interval: float = Field(0.02, ge=0, description="Seconds between two chunks of one stream (about); what "
                                   "the model writes meanwhile goes out together (0: a chunk per step).")
    api_key: str | None = Field(None, exclude=True, repr=False,
                                description=f"Bearer key required on /v1 (from ${API_KEY_ENV}).")

    def to_env(self) -> dict[str, str]:
        """Environment variables that let `from_env` rebuild these settings (no key)."""
        return {SETTINGS_ENV: self.model_dump_json()}

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from ``CHARNET_SERVE_SETTINGS`` (defaults when unset) and the key
        from ``CHARNET_API_KEY``."""
        raw = os.environ.get(SETTINGS_ENV)
        base = cls.model_validate_json(raw) if raw else cls()
        key = os.environ.get(API_KEY_ENV) or None
        return base.model_copy(update={"api_key": key})
