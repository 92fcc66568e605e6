"""The job kinds this trainer runs: kind -> (typed config, run function).

Each config is a pydantic model validated at submission (``POST /jobs``), so a bad field is a
422 naming it. Run functions take a :class:`services.trainer.engine.JobContext` and return their
final metrics; the heavy imports (torch, verl, models) happen inside them, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from services.trainer.data.ramp import RampConfig
from services.trainer.distill import DistillConfig
from services.trainer.rl import RLConfig, run_rl_job
from services.trainer.sft import SFTConfig, run_sft_job
from services.trainer.tasks import (
    ColdStartJobConfig,
    EvalJobConfig,
    SimulatorSFTJobConfig,
    run_coldstart_job,
    run_distill_job,
    run_eval_job,
    run_ramp_job,
    run_simulator_sft_job,
)

if TYPE_CHECKING:
    from services.trainer.engine import JobContext


@dataclass(frozen=True)
class JobKindSpec:
    config: type[BaseModel]  # validated at submission
    run: Callable[[JobContext], dict[str, Any] | None]  # runs in a job thread; returns final metrics
    doc: str = ""


JOB_KINDS: dict[str, JobKindSpec] = {
    "sft": JobKindSpec(SFTConfig, run_sft_job, "supervised fine-tuning on trajectory records (observation-masked)"),
    "rl": JobKindSpec(RLConfig, run_rl_job, "GRPO / DAPO with rollouts on the episode queue"),
    "ramp": JobKindSpec(RampConfig, run_ramp_job, "MaskSearch RAMP samples from corpus passages"),
    "coldstart": JobKindSpec(ColdStartJobConfig, run_coldstart_job,
                             "scripted cold-start trajectories (RAMP + QA train part) with real retrieval"),
    "distill": JobKindSpec(DistillConfig, run_distill_job,
                           "a teacher's agent episodes on the workers; correct trajectories -> SFT records"),
    "simulator_sft": JobKindSpec(SimulatorSFTJobConfig, run_simulator_sft_job,
                                 "ZeroSearch simulator fine-tuning on judge-labelled real retrieval"),
    "eval": JobKindSpec(EvalJobConfig, run_eval_job, "direct / rag / agent / policy:<ckpt> side by side"),
}
