"""Settings of the simulator service (env prefix ``SIMULATOR_``; nested LLM settings ``SIMULATOR_LLM__*``)."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.config import LLMSettings, ServiceSettings
from shared.schemas import SimMode

__all__ = ["SimMode", "SimulatorSettings"]


class SimulatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SIMULATOR_", extra="ignore", env_nested_delimiter="__")

    port: int = 8003
    mode: SimMode = "llm"  # default generator: "llm" (writes documents) | "corpus" (real passages)
    llm: LLMSettings = Field(default_factory=LLMSettings)  # the simulator model (llm mode)
    retriever_url: str | None = None  # the retriever service (corpus mode); also enables corpus per request
    retriever_api_key: SecretStr | None = None  # the retriever's bearer token (its RETRIEVER_API_KEY), if it wants one
    retriever_timeout_s: float = Field(default=30.0, gt=0)
    judge_url: str | None = None  # the judge service; fine-tuning labels fall back to shared.metrics without it

    # documents
    default_k: int = Field(default=5, ge=1)  # documents per query when a request does not say
    max_k: int = Field(default=10, ge=1)  # larger k is refused with 422
    words: int = Field(default=30, ge=3)  # target words per document
    max_query_chars: int = Field(default=4096, ge=1)  # longer queries are refused with 422
    max_words_factor: float = Field(default=2.0, ge=1.0)  # a document is cut at words * this
    template: str = "zerosearch"  # prompt template family (shared.simulation.prompts)

    # llm generation
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    tokens_per_doc: int = Field(default=0, ge=0)  # new-token budget per document; 0 = 1.6 * words + 12
    max_new_tokens: int = Field(default=1024, ge=16)  # cap on one generation
    max_regenerations: int = Field(default=1, ge=0)  # extra generations when too few documents parse

    # corpus mode
    corpus_pool: int = Field(default=20, ge=1)  # hits fetched per query to pick useful / noisy passages from
    corpus_pool_cap: int = Field(default=50, ge=1)  # never ask the retriever for more (its max_topk)
    corpus_promote_gold: bool = True  # useful: move pool passages that contain the gold answer to the top

    # curriculum (ZeroSearch): p_noise(step) = start + (base^(step/T) - 1)/(base - 1) * (end - start)
    p_noise_start: float = Field(default=0.0, ge=0.0, le=1.0)
    p_noise_end: float = Field(default=0.5, ge=0.0, le=1.0)
    p_noise_base: float = Field(default=4.0, gt=0.0)
    total_steps: int = Field(default=1000, ge=1)  # T; the trainer may change it with POST /schedule
    step: int = Field(default=0, ge=0)  # current training step at start-up

    # batching and overload
    batch_window_ms: float = Field(default=10.0, ge=0.0)  # wait this long to coalesce concurrent requests
    max_batch_queries: int = Field(default=32, ge=1)  # queries per generation batch
    max_pending: int = Field(default=256, ge=1)  # queued queries beyond this get 503

    seed: int = 0  # quality draws and sampling

    @model_validator(mode="after")
    def _check(self) -> SimulatorSettings:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        self.retriever_url = self.retriever_url.rstrip("/") if self.retriever_url else None  # "" = none
        self.judge_url = self.judge_url.rstrip("/") if self.judge_url else None
        if self.mode == "corpus" and not self.retriever_url:
            raise ValueError("corpus mode needs SIMULATOR_RETRIEVER_URL (the retriever service)")
        return self
