"""Settings of a rollout worker: everything comes from ``WORKER_*`` env vars (DESIGN.md §4).

    WORKER_REDIS_URL=redis://127.0.0.1:6379/0      (falls back to SEARCHLAB_REDIS_URL)
    WORKER_LLM__BACKEND=local WORKER_LLM__MODEL=smollm2
    WORKER_RETRIEVER_URL=http://127.0.0.1:8001 WORKER_SIMULATOR_URL=... WORKER_JUDGE_URL=...
    WORKER_BATCH_SIZE=8 WORKER_VISIBILITY_TIMEOUT_S=120 WORKER_MAX_ATTEMPTS=3
    WORKER_API_KEY=...                  the bearer token sent to every service (and rollout server) ...
    WORKER_RETRIEVER_API_KEY=... WORKER_SIMULATOR_API_KEY=... WORKER_JUDGE_API_KEY=...   ... but these, per service
"""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import LLMSettings
from shared.keys import ServiceKeys

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class WorkerSettings(BaseSettings):
    """One rollout worker process."""

    model_config = SettingsConfigDict(env_prefix="WORKER_", extra="ignore", env_nested_delimiter="__")

    name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")  # consumer name
    redis_url: str = ""  # empty -> SEARCHLAB_REDIS_URL -> redis://127.0.0.1:6379/0
    llm: LLMSettings = Field(default_factory=LLMSettings)  # the policy's generation backend
    retriever_url: str | None = None  # search backend "retriever"
    simulator_url: str | None = None  # search backend "simulator"
    judge_url: str | None = None  # answer scoring with the LLM judge (reward metric "llm")
    api_key: SecretStr | None = None  # bearer token for every service without its own key below (one key for all)
    retriever_api_key: SecretStr | None = None  # the retriever's key (its RETRIEVER_API_KEY)
    simulator_api_key: SecretStr | None = None  # the simulator's key (its SIMULATOR_API_KEY)
    judge_api_key: SecretStr | None = None  # the judge's key (its JUDGE_API_KEY)
    batch_size: int = Field(default=8, ge=1)  # episodes claimed and generated together
    # how a batch is decoded: "continuous" (rollout/continuous.py: rows leave and join the decode batch, each
    # episode's KV cache kept across turns, searches overlap decoding) or "per_turn" (agent.py: each turn one
    # batch to its longest row, then every search; the conversation prefilled again each turn). Remote
    # generation backends always run per turn.
    rollout: Literal["continuous", "per_turn"] = "continuous"
    # continuous: while a batch decodes, rows that end are refilled with new episodes of the same policy read
    # off the queue (each result written as its episode ends), up to this many episodes in one run; then the
    # run drains and the loop claims afresh (so episodes of other policies, held meanwhile, get their turn)
    refill_limit: int = Field(default=64, ge=0, le=100_000)
    block_ms: int = Field(default=1000, ge=1)  # how long one XREADGROUP waits for new episodes
    batch_wait_ms: int = Field(default=100, ge=0)  # after a partial batch arrives, wait this long to fill it
    visibility_timeout_s: float = Field(default=120.0, gt=0)  # idle pending entries older than this are reclaimed
    heartbeat_s: float | None = None  # refresh in-flight entries this often (None: visibility_timeout_s / 3)
    max_attempts: int = Field(default=3, ge=1)  # deliveries of one episode before it is dead-lettered
    episode_deadline_s: float | None = Field(default=1800.0, gt=0)  # after this, a claimed episode is no longer
    #   refreshed by the heartbeat, so a hung worker's episode is reclaimed (None: refreshed while the worker beats)
    redis_retry_s: float = Field(default=300.0, gt=0)  # how long a result write is retried while Redis is away
    search_timeout_s: float = Field(default=30.0, gt=0)  # per search request
    search_retries: int = Field(default=2, ge=0)  # capped retries of a failed search request
    search_concurrency: int = Field(default=16, ge=1)  # searches in flight at once
    judge_timeout_s: float = Field(default=120.0, gt=0)
    policy_cache: int = Field(default=3, ge=1)  # policies kept loaded (LRU): jobs at once, each naming its own
    remote_inflight: int = Field(default=64, ge=1)  # episodes on remote rollout servers (verl) in flight at once
    generate_timeout_s: float = Field(default=600.0, gt=0)  # per /generate request to a remote rollout server
    max_episodes: int | None = None  # exit after this many episodes (tests, benches); None: run until SIGTERM
    log_level: str = "info"

    @model_validator(mode="after")
    def _redis_fallback(self) -> WorkerSettings:
        if not self.redis_url:
            self.redis_url = os.environ.get("SEARCHLAB_REDIS_URL", DEFAULT_REDIS_URL)
        return self

    def keys(self) -> ServiceKeys:
        """What the worker sends to each service: its own key, else ``api_key``."""
        return ServiceKeys(default=self.api_key, retriever=self.retriever_api_key, simulator=self.simulator_api_key,
                           judge=self.judge_api_key)

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_s if self.heartbeat_s is not None else self.visibility_timeout_s / 3
