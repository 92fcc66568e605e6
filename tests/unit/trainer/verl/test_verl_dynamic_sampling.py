"""DAPO's dynamic sampling in searchlab's agent-loop manager, as pure logic over verl's ``DataProto``: a group
whose samples all score the same is generated again (same prompts) and replaced when its fresh samples
differ; informative groups are never touched. Generation here is a scripted stand-in (each call returns
the rewards the test chose), since what is under test is which rows are kept."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from tensordict import TensorDict
from verl import DataProto

from services.trainer.verl.manager import resample_uniform_groups

N = 2  # samples per prompt


def rollout(prompt_ids: list[int], rewards: list[float], mark: int) -> DataProto:
    """Rows as the agent-loop manager returns them: responses (filled with ``mark``), rm_scores on the last
    token, one non-tensor column."""
    rows = len(rewards)
    rm = torch.zeros(rows, 4)
    rm[:, -1] = torch.tensor(rewards)
    batch = TensorDict({"responses": torch.full((rows, 4), mark), "rm_scores": rm}, batch_size=rows)
    return DataProto(batch=batch, non_tensor_batch={"prompt": np.array(prompt_ids, dtype=object),
                                                    "mark": np.array([mark] * rows, dtype=object)})


def test_uniform_groups_are_resampled_and_informative_ones_kept() -> None:
    prompts = rollout([0, 0, 1, 1, 2, 2], [0] * 6, mark=-1)  # prompt p repeated N times, interleaved
    first = rollout([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1], mark=0)  # groups 0 and 2 uniform
    script = iter([{0: [0, 1], 2: [1, 1]}, {2: [0.5, 1]}])  # round 1: group 0 turns informative; round 2: group 2
    asked: list[list[int]] = []

    async def generate(batch: DataProto) -> DataProto:
        ids = [int(p) for p in batch.non_tensor_batch["prompt"]]
        asked.append(ids)
        scores = next(script)
        return rollout(ids, [r for g in ids[::N] for r in scores[g]], mark=len(asked))

    out, stats = asyncio.run(resample_uniform_groups(prompts, first, generate, N, rounds=2))
    assert asked == [[0, 0, 2, 2], [2, 2]]  # only the uniform groups' prompts were generated again
    rewards = out.batch["rm_scores"].sum(-1).tolist()
    assert rewards == [0, 1, 0, 1, 0.5, 1]
    assert out.batch["responses"][:, 0].tolist() == [1, 1, 0, 0, 2, 2]  # group 1 is the first rollout's
    assert out.non_tensor_batch["mark"].tolist() == [1, 1, 0, 0, 2, 2]
    assert stats == {"uniform_groups_before": 2.0, "resampled_groups": 2.0, "uniform_groups_after": 0.0}


def test_a_group_uniform_after_the_last_round_stays() -> None:
    prompts = rollout([0, 0, 1, 1], [0] * 4, mark=-1)
    first = rollout([0, 0, 1, 1], [1, 1, 0, 1], mark=0)

    async def generate(batch: DataProto) -> DataProto:
        return rollout([int(p) for p in batch.non_tensor_batch["prompt"]], [1, 1], mark=9)

    out, stats = asyncio.run(resample_uniform_groups(prompts, first, generate, N, rounds=1))
    assert out.batch["responses"][:, 0].tolist() == [0, 0, 0, 0]  # nothing better came back: the original stays
    assert stats["uniform_groups_after"] == 1.0 and stats["resampled_groups"] == 0.0
