"""What a verl run is configured with: a recipe's paper settings plus what the cluster decides."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from services.trainer.verl.loop_config import Dispatch
from services.trainer.verl.recipes import Algorithm
from shared.confine import InputFile, OutputDir, ServiceURL, confinement_of

PATH_WORDS = ("path", "dir", "file", "root")


class VerlConfig(BaseModel):
    """A verl run: the recipe's paper settings plus what the cluster decides. ``None``: the recipe's value."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = "search_r1"  # recipes.RECIPES
    dispatch: Dispatch = "queue"  # queue: episodes on the Redis stream, run by searchlab workers; inline
    model_path: str  # HF model folder or hub name reachable by the cluster (and by the workers: tokenizer)
    retriever_url: ServiceURL | None = None  # the retriever (search_r1, research, masksearch; zerosearch's real share)
    simulator_url: ServiceURL | None = None  # the ZeroSearch simulator (zerosearch)
    judge_url: ServiceURL | None = None  # the judge service (metric "llm": masksearch)
    algorithm: Algorithm | None = None  # grpo | dapo | reinforce
    group_size: int | None = Field(default=None, ge=1)  # samples per prompt (GRPO n)
    lr: float | None = Field(default=None, gt=0)
    kl_coef: float | None = Field(default=None, ge=0)  # low_var_kl loss coefficient
    metric: str | None = None  # answer metric of the reward
    search: Literal["retriever", "simulator", "mix"] | None = None  # where searches go
    real_fraction: float = Field(default=0.5, ge=0, le=1)  # search "mix": share of episodes on the retriever
    train_batch_size: int = Field(default=512, ge=1)  # prompts per step (Search-R1: 512)
    ppo_mini_batch_size: int | None = Field(default=None, ge=1)  # None: half the train batch (Search-R1: 256)
    micro_batch_size_per_gpu: int = Field(default=8, ge=1)
    max_prompt_length: int = Field(default=4096, ge=64)
    max_response_length: int = Field(default=3000, ge=64)  # the whole trajectory: generations + observations
    max_turns: int = Field(default=4, ge=1)  # assistant turns (searches + answer)
    max_turn_tokens: int = Field(default=500, ge=8)  # tokens one generation may add
    obs_max_tokens: int = Field(default=500, ge=16)  # tokens of each <information>
    temperature: float = Field(default=1.0, ge=0)
    epochs: int = Field(default=1, ge=1)  # passes over each stage's data
    total_training_steps: int | None = Field(default=None, ge=1)  # per stage; None: epochs x batches per epoch
    save_freq: int = Field(default=50, ge=1)  # steps between checkpoints (resume_mode=auto picks the last)
    test_freq: int = Field(default=25, ge=1)  # steps between validations on the eval parts
    max_checkpoints: int = Field(default=3, ge=1)
    n_gpus_per_node: int = Field(default=8, ge=1)
    nnodes: int = Field(default=1, ge=1)
    tensor_parallel: int = Field(default=2, ge=1)  # SGLang rollout TP
    gpu_memory_utilization: float = Field(default=0.6, gt=0, le=1)
    agent_workers: int = Field(default=8, ge=1)  # verl agent-loop processes
    overlong_buffer: int = Field(default=512, ge=1)  # DAPO: soft overlong window (tokens)
    ramp_samples: InputFile | None = None  # masksearch: the RAMP samples JSONL (a ramp job's output)
    episode_timeout_s: float = Field(default=1800.0, gt=0)
    project: str = "searchlab"
    experiment: str = "search-agent"
    checkpoint_dir: OutputDir | None = None  # None: <out>/checkpoints
    extra_overrides: list[str] = Field(default_factory=list, max_length=64)  # more hydra overrides, appended last

    @field_validator("extra_overrides")
    @classmethod
    def _plain_overrides(cls, v: list[str], info: ValidationInfo) -> list[str]:
        """Through a service (a confinement in the context) an override may not name a path or read the
        environment (``${oc.env:...}``): those are what the confined fields are for."""
        for item in v:
            if len(item) > 1000:
                raise ValueError("an override is at most 1,000 characters")
            key = item.split("=", 1)[0].lower()
            if confinement_of(info) is not None and ("${" in item or any(w in key for w in PATH_WORDS)):
                raise ValueError(f"'{item}': through the jobs API an override may not set a path or "
                                 "interpolate (use the config's own fields)")
        return v
