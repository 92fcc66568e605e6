"""The job kinds this trainer runs: kind -> (typed config, run function).

Each config is a pydantic model validated at submission (``POST /jobs``), so a bad field is a
422 naming it. Run functions (:mod:`services.trainer.jobs.runners`) take a
:class:`~services.trainer.jobs.context.JobContext` and return their final metrics; the heavy
imports (torch, verl, models) happen inside them, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from services.trainer.data.ramp import RampConfig
from services.trainer.jobs import runners
from services.trainer.jobs.configs import (
    ColdStartJobConfig,
    DistillJobConfig,
    EvalJobConfig,
    RLJobConfig,
    SimulatorSFTJobConfig,
)
from services.trainer.jobs.context import JobContext
from services.trainer.learn.sft import SFTConfig

RunFn = Callable[[JobContext], dict[str, Any] | None]


@dataclass(frozen=True)
class JobKindSpec:
    config: type[BaseModel]  # validated at submission
    run: RunFn  # runs in a job thread; returns final metrics
    doc: str = ""
    # whether a job of this config, running when the trainer died, is started again (it resumes from
    # what it left in its folder) rather than ended "interrupted"
    resumable: Callable[[BaseModel], bool] = lambda config: False


JOB_KINDS: dict[str, JobKindSpec] = {
    "sft": JobKindSpec(SFTConfig, runners.run_sft_job,
                       "supervised fine-tuning on trajectory records (observation-masked)"),
    "rl": JobKindSpec(RLJobConfig, runners.run_rl_job,
                      "GRPO / DAPO with rollouts on the episode queue (engine local), or a verl run prepared "
                      "and validated (engine verl)",
                      resumable=lambda config: getattr(config, "engine", "local") == "local"),
    "ramp": JobKindSpec(RampConfig, runners.run_ramp_job, "MaskSearch RAMP samples from corpus passages"),
    "coldstart": JobKindSpec(ColdStartJobConfig, runners.run_coldstart_job,
                             "cold-start trajectories (RAMP + QA train part) with real retrieval: scripted, or "
                             "LLM agents (planner -> rewriter -> observer) kept by the judge"),
    "distill": JobKindSpec(DistillJobConfig, runners.run_distill_job,
                           "a teacher's agent episodes on the workers; correct trajectories -> SFT records; with "
                           "rounds > 1, self-distillation: distill -> SFT -> eval, each checkpoint the next teacher",
                           resumable=lambda config: getattr(config, "rounds", 1) > 1),
    "simulator_sft": JobKindSpec(SimulatorSFTJobConfig, runners.run_simulator_sft_job,
                                 "ZeroSearch simulator fine-tuning on judge-labelled real retrieval"),
    "eval": JobKindSpec(EvalJobConfig, runners.run_eval_job, "direct / rag / agent / policy:<ckpt> side by side"),
}
