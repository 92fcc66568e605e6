"""Settings of the judge service (env prefix ``JUDGE_``; nested LLM settings as ``JUDGE_LLM__BACKEND`` etc.)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.config import LLMSettings, ServiceSettings


class JudgeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="JUDGE_", extra="ignore", env_nested_delimiter="__")

    port: int = 8002
    llm: LLMSettings = Field(default_factory=LLMSettings)  # the judge model (SGLang in production)
    prompt_version: str = "v1"  # which verdict prompt template (services/judge/prompts.py)
    max_new_tokens: int = Field(default=16, ge=1)  # verdict length cap
    max_prediction_chars: int = Field(default=2000, ge=1)  # longer predictions are cut in the prompt

    # Cache: JUDGE_REDIS_URL, else SEARCHLAB_REDIS_URL; unset (or JUDGE_REDIS_URL="") = no cache.
    redis_url: str | None = None
    cache_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)  # verdict lifetime in Redis
    cache_prefix: str = "searchlab:judge"  # Redis key prefix
    redis_timeout_s: float = Field(default=0.5, gt=0)  # per Redis command; a slow Redis is a miss
    redis_retry_s: float = Field(default=5.0, ge=0)  # after a Redis error, skip the cache this long

    # Batching and backpressure (llm method).
    max_items: int = Field(default=256, ge=1)  # items per request; more -> 422
    # Rule methods: characters a request may make the judge compare, sum over items of
    # #gold x (prediction + gold length); more -> 422. Scored in a worker thread, never on the event loop.
    max_rule_chars: int = Field(default=20_000_000, ge=1000)
    max_batch: int = Field(default=16, ge=1)  # items per backend call
    batch_wait_ms: float = Field(default=10.0, ge=0)  # how long a batch waits to fill up
    max_queue: int = Field(default=1024, ge=1)  # items waiting for the backend; beyond -> 503
    backend_concurrency: int | None = Field(default=None, ge=1)  # backend calls in flight (None: local 1, openai 4)
    retry_after_s: int = Field(default=1, ge=1)  # Retry-After on 503

    @model_validator(mode="after")
    def _defaults_and_limits(self) -> JudgeSettings:
        if self.redis_url is None:
            self.redis_url = os.environ.get("SEARCHLAB_REDIS_URL") or None
        elif not self.redis_url.strip():
            self.redis_url = None  # explicitly off
        if self.max_queue < self.max_items:
            raise ValueError(f"max_queue ({self.max_queue}) must be >= max_items ({self.max_items}), "
                             "or a full-size request could never be accepted")
        return self

    @property
    def concurrency(self) -> int:
        if self.backend_concurrency is not None:
            return self.backend_concurrency
        return 1 if self.llm.backend == "local" else 4

    @property
    def cache_mode(self) -> Literal["redis", "off"]:
        return "redis" if self.redis_url else "off"
