"""What searchlab's verl agent loop is configured with, and what it reads from the environment.

The run directory's ``agent_loop.yaml`` (verl's ``actor_rollout_ref.rollout.agent.agent_loop_config_path``)
names the loop and carries a :class:`LoopConfig` under ``searchlab:``; verl instantiates the loop once
per sample with it (``hydra.utils.instantiate``). Secrets never go there: the services' bearer tokens
and the Redis URL come from the environment of the processes verl starts (:class:`LoopRuntime`,
``SEARCHLAB_<SERVICE>_API_KEY`` per service, ``SEARCHLAB_API_KEY`` for the rest, ``SEARCHLAB_REDIS_URL``),
so neither the parquet, the YAML nor the command line holds a key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.trainer.learn.rl_curriculum import BackendChoice, NoiseSpec
from shared.keys import ClientKeyEnv

AGENT_NAME = "searchlab"  # the name verl's registry knows the loop by (default_agent_loop)
TRACE_KEY = "searchlab"  # AgentLoopOutput.extra_fields key of the trajectory's structure (the reward reads it)
LOOP_TARGET = "services.trainer.verl.agent_loop.SearchlabAgentLoop"
MANAGER_TARGET = "services.trainer.verl.manager.SearchlabAgentLoopManager"
Dispatch = Literal["queue", "inline"]


class LoopConfig(BaseModel):
    """One verl run's episodes: how they are dispatched, searched and bounded."""

    model_config = ConfigDict(extra="forbid")

    dispatch: Dispatch = "queue"  # queue: Redis stream -> searchlab workers; inline: in verl's own process
    template: str = "search_r1"  # shared.protocol template (prompts in the parquet use the same one)
    max_turns: int = Field(default=4, ge=1)  # assistant turns before the answer is forced
    max_turn_tokens: int = Field(default=500, ge=8)  # tokens one generation may add
    obs_max_tokens: int = Field(default=500, ge=8)  # each <information> block is cut to this
    topk: int = Field(default=3, ge=1, le=50)  # documents per search
    search: BackendChoice = "retriever"  # retriever | simulator | mix (ZeroSearch's real/simulated mix)
    real_fraction: float = Field(default=0.5, ge=0.0, le=1.0)  # mix: share of episodes on the retriever
    noise: NoiseSpec = Field(default_factory=NoiseSpec)  # ZeroSearch p_noise(step) for simulated searches
    total_steps: int = Field(default=1, ge=1)  # T of the noise schedule (trainer.total_training_steps)
    retriever_url: str | None = None
    simulator_url: str | None = None
    job_id: str = "verl"  # prefix of this run's queue job ids (one per verl agent-loop process)
    episode_timeout_s: float = Field(default=1800.0, gt=0)  # queue: a sample's result must arrive by then
    search_timeout_s: float = Field(default=30.0, gt=0)
    search_retries: int = Field(default=2, ge=0)
    search_concurrency: int = Field(default=64, ge=1)
    resample_rounds: int = Field(default=0, ge=0)  # DAPO dynamic sampling: re-sample all-equal groups (manager)

    @model_validator(mode="after")
    def _urls(self) -> LoopConfig:
        if self.search in ("retriever", "mix") and not self.retriever_url:
            raise ValueError(f"search {self.search!r} needs retriever_url")
        if self.search in ("simulator", "mix") and not self.simulator_url:
            raise ValueError(f"search {self.search!r} needs simulator_url (the ZeroSearch simulator)")
        return self


class LoopRuntime(ClientKeyEnv):
    """Read by the loop and the reward where verl runs them (Ray actors): secrets and cluster addresses only.
    The services' keys are :class:`shared.keys.ClientKeyEnv`'s (``keys()``): ``SEARCHLAB_RETRIEVER_API_KEY``,
    ``SEARCHLAB_SIMULATOR_API_KEY``, ``SEARCHLAB_JUDGE_API_KEY``, and ``SEARCHLAB_API_KEY`` for any not set."""

    model_config = SettingsConfigDict(env_prefix="SEARCHLAB_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"  # SEARCHLAB_REDIS_URL: the episode queue (dispatch=queue)
