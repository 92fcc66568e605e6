"""The RL curricula, driven by the step counter (DESIGN.md §5) and logged every step.

- **RAMP mask count** (MaskSearch): training moves through stages of 1, 2, 3, 4 masked spans per
  passage; stage ``k`` covers an equal share of the steps (or explicit ``stage_steps``). The
  sampler that picks RAMP samples of a stage is :class:`~services.trainer.learn.prompts.PromptSampler`;
  ``mask_order="mixed"`` turns the stages off (every step draws from all mask counts at random:
  MaskSearch's baseline to the curriculum).
- **Search noise** (ZeroSearch): ``p_noise(step)`` from :func:`shared.noise_schedule.p_noise`, sent
  with every simulated search; the search backend is the retriever, the simulator, or a mix
  (each episode uses the real retriever with probability ``real_fraction``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from shared.noise_schedule import p_noise

BackendChoice = Literal["retriever", "simulator", "mix"]
MaskOrder = Literal["staged", "mixed"]


class NoiseSpec(BaseModel):
    """ZeroSearch's noise schedule: start + (base^(step/T) - 1)/(base - 1) * (end - start)."""

    start: float = Field(default=0.0, ge=0.0, le=1.0)
    end: float = Field(default=0.5, ge=0.0, le=1.0)
    base: float = Field(default=4.0, gt=0.0)


class CurriculumSpec(BaseModel):
    """Which curricula an RL job runs."""

    mask_stages: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], max_length=16)  # RAMP mask counts, in order
    stage_steps: list[int] | None = None  # steps per stage (None: an equal share of the total each)
    # RAMP prompts: "staged" draws each step from its stage's mask count; "mixed" from every mask count at random
    mask_order: MaskOrder = "staged"
    search_backend: BackendChoice = "retriever"  # where searches go
    real_fraction: float = Field(default=0.5, ge=0.0, le=1.0)  # "mix": share of episodes on the retriever
    noise: NoiseSpec = Field(default_factory=NoiseSpec)

    @model_validator(mode="after")
    def _check(self) -> CurriculumSpec:
        if not self.mask_stages or any(m < 1 for m in self.mask_stages):
            raise ValueError("mask_stages needs at least one mask count >= 1")
        if self.stage_steps is not None and len(self.stage_steps) != len(self.mask_stages):
            raise ValueError("stage_steps needs one entry per mask stage")
        return self


@dataclass(frozen=True)
class CurriculumPoint:
    """The curriculum's settings at one step (logged with the step's metrics)."""

    step: int
    mask_stage: int  # index into mask_stages
    max_masks: int  # RAMP samples of this step have this many masks
    p_noise: float  # probability that a simulated document set is noisy

    def metrics(self) -> dict[str, float]:
        return {"mask_stage": float(self.mask_stage), "max_masks": float(self.max_masks), "p_noise": self.p_noise}


class Curriculum:
    def __init__(self, spec: CurriculumSpec, total_steps: int):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.spec = spec
        self.total_steps = total_steps

    def stage_of(self, step: int) -> int:
        stages = self.spec.mask_stages
        if self.spec.stage_steps is not None:
            edge = 0
            for i, n in enumerate(self.spec.stage_steps):
                edge += n
                if step < edge:
                    return i
            return len(stages) - 1
        return min(len(stages) - 1, step * len(stages) // self.total_steps)

    def at(self, step: int) -> CurriculumPoint:
        stage = self.stage_of(step)
        noise = self.spec.noise
        p = p_noise(step, self.total_steps, noise.start, noise.end, noise.base)
        return CurriculumPoint(step=step, mask_stage=stage, max_masks=self.spec.mask_stages[stage], p_noise=p)

    def backend(self, rng: random.Random) -> Literal["retriever", "simulator"]:
        """The search backend of one episode (``mix``: the retriever with probability real_fraction)."""
        choice = self.spec.search_backend
        if choice == "mix":
            return "retriever" if rng.random() < self.spec.real_fraction else "simulator"
        return choice
