"""RL prompts: where they come from (QA train parts, RAMP samples), how each episode runs, and the
sampler that walks them (RAMP prompts by the curriculum's mask stage). RL and distillation share them.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from services.trainer.learn.rl_curriculum import CurriculumPoint
from shared.confine import InputFile
from shared.schemas import MAX_OBS_TOKENS, MAX_TOTAL_TOKENS, MAX_TURNS, EpisodeRewardSpec, EpisodeSampling


class PromptSource(BaseModel):
    """Where RL prompts come from."""

    kind: Literal["qa", "ramp"] = "qa"  # QA questions | RAMP samples (mask-filling, curriculum by mask count)
    dataset: str = "hotpotqa"  # qa: a shared dataset name; always its train part
    part: Literal["train"] = "train"  # the eval part is never trained on
    path: InputFile | None = None  # ramp: the samples JSONL (a ramp job's output); qa: an extra JSONL of QA rows
    limit: int | None = Field(default=None, ge=1, le=10_000_000)  # use only the first N prompts

    @field_validator("part", mode="before")
    @classmethod
    def _never_eval(cls, v: Any) -> Any:
        if v != "train":
            raise ValueError("RL trains only on the 'train' part of the fixed split; eval numbers come from 'eval'")
        return v

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from shared.data import DATASETS, canonical_name

        try:  # an unknown name is refused at submission, not when the job loads its prompts
            canonical_name(v)
        except ValueError:
            raise ValueError(f"unknown dataset '{v}'; valid: {', '.join(DATASETS)} (a QA file goes in 'path')") from None
        return v


class EpisodeSpec(BaseModel):
    """How each rollout runs (copied into every EpisodeRequest)."""

    template: str = "search_r1"
    max_turns: int = Field(default=2, ge=1, le=MAX_TURNS)
    max_total_tokens: int = Field(default=384, ge=16, le=MAX_TOTAL_TOKENS)
    obs_max_tokens: int = Field(default=160, ge=8, le=MAX_OBS_TOKENS)
    topk: int = Field(default=3, ge=1, le=50)
    sampling: EpisodeSampling = Field(default_factory=lambda: EpisodeSampling(max_new_tokens=64, temperature=1.0))
    reward: EpisodeRewardSpec = Field(default_factory=lambda: EpisodeRewardSpec(kind="hybrid", metric="f1",
                                                                                format_weight=0.2))


class Prompt(BaseModel):
    """One RL prompt: a question (or pre-built RAMP messages) and its gold answers."""

    id: str
    question: str
    ground_truth: list[str]
    messages: list[dict[str, str]] | None = None
    masks: int = 0  # RAMP: masked spans in the passage
    template: str | None = None


def load_prompts(source: PromptSource) -> list[Prompt]:
    from shared.data import load_questions, load_split
    from shared.metrics import gold_answers

    if source.kind == "ramp":
        from services.trainer.data.masking import template_name
        from services.trainer.data.ramp import load_samples

        prompts = []
        for s in load_samples(source.path or ""):
            prompts.append(Prompt(id=s.id, question=s.question, ground_truth=list(s.answers),
                                  messages=s.messages(), masks=s.num_masks, template=template_name(s.answer_format)))
        return prompts[:source.limit] if source.limit else prompts
    rows = load_questions(source.path) if source.path else load_split(source.dataset, "train")
    prompts = [Prompt(id=str(r["id"]), question=str(r["question"]), ground_truth=gold_answers(r)) for r in rows]
    return prompts[:source.limit] if source.limit else prompts


class PromptSampler:
    """Cycles through shuffled prompts; RAMP prompts are drawn from the current mask stage, or, with
    ``mixed``, from every mask count alike (one shuffled pool: the curriculum's baseline)."""

    def __init__(self, prompts: Sequence[Prompt], seed: int, mixed: bool = False):
        if not prompts:
            raise ValueError("no RL prompts")
        self.rng = random.Random(seed)
        self.by_masks: dict[int, list[Prompt]] = defaultdict(list)
        for p in prompts:
            self.by_masks[0 if mixed else p.masks].append(p)
        self.cursor: dict[int, int] = defaultdict(int)
        for bucket in self.by_masks.values():
            self.rng.shuffle(bucket)

    def take(self, n: int, point: CurriculumPoint) -> list[Prompt]:
        keys = sorted(self.by_masks)
        key = point.max_masks if point.max_masks in self.by_masks else (
            max((k for k in keys if k <= point.max_masks), default=keys[0]))
        if keys == [0]:
            key = 0
        bucket = self.by_masks[key]
        out = []
        for _ in range(n):
            out.append(bucket[self.cursor[key] % len(bucket)])
            self.cursor[key] += 1
        return out
