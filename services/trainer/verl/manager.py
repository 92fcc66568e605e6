"""verl's agent-loop manager with what searchlab's runs need from it: the global step, and DAPO's dynamic sampling.

- **The global step.** verl's trainer puts ``global_steps`` (and ``validate``) into the batch's
  ``meta_info``, but an agent loop's ``run()`` only receives the batch's columns. ZeroSearch's noise
  curriculum moves with the step, so :class:`SearchlabAgentLoopWorker` copies both into every sample's row
  (``searchlab_step``, ``searchlab_validate``) before verl's own ``generate_sequences`` runs, and takes
  them out of the output again.
- **Dynamic sampling.** verl 0.7.1's trainer has no group filter (``algorithm.filter_groups`` is read by
  nothing), and a group whose samples all score the same carries no GRPO advantage. With
  ``resample_rounds`` > 0 in the run's LoopConfig (the masksearch recipe: 2), :func:`resample_uniform_groups`
  re-generates such groups (the same prompts, fresh samples; rewards are streamed with the rollout) and
  keeps a group's new samples when they differ, up to that many rounds. Unlike DAPO's recipe it does not
  draw new prompts (the trainer owns the dataloader): a group still uniform after the last round stays.

Selected with ``actor_rollout_ref.rollout.agent.agent_loop_manager_class`` (verl's ``ray_trainer`` loads
it by name).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import ray
import torch
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopManager, AgentLoopWorker
from verl.experimental.agent_loop.utils import resolve_config_path
from verl.protocol import DataProto
from verl.utils.ray_utils import auto_await

from services.trainer.verl.loop_config import AGENT_NAME

log = logging.getLogger(__name__)

STEP_KEY = "searchlab_step"
VALIDATE_KEY = "searchlab_validate"


class SearchlabAgentLoopWorker(AgentLoopWorker):
    """verl's ``AgentLoopWorker``; each sample's row also carries the step and whether it validates."""

    async def generate_sequences(self, batch: DataProto) -> DataProto:
        n = len(batch)
        step = int(batch.meta_info.get("global_steps", -1))
        batch.non_tensor_batch[STEP_KEY] = np.full(n, step, dtype=object)
        batch.non_tensor_batch[VALIDATE_KEY] = np.full(n, bool(batch.meta_info.get("validate", False)), dtype=object)
        output: DataProto = await super().generate_sequences(batch)
        for key in (STEP_KEY, VALIDATE_KEY):
            output.non_tensor_batch.pop(key, None)
        return output


Generate = Callable[[DataProto], Awaitable[DataProto]]


def _uniform_groups(output: DataProto, n: int) -> list[int]:
    scores = output.batch["rm_scores"].sum(-1).view(-1, n)
    return [g for g in range(scores.shape[0]) if float(scores[g].max() - scores[g].min()) < 1e-6]


def _replace_rows(output: DataProto, rows: list[int], fresh: DataProto, fresh_rows: list[int]) -> None:
    at, src = torch.tensor(rows), torch.tensor(fresh_rows)
    for key in output.batch.keys():
        output.batch[key][at] = fresh.batch[key][src]
    for key, values in output.non_tensor_batch.items():
        if key in fresh.non_tensor_batch:
            values[np.array(rows)] = fresh.non_tensor_batch[key][np.array(fresh_rows)]


async def resample_uniform_groups(prompts: DataProto, output: DataProto, generate: Generate, n: int,
                                  rounds: int) -> tuple[DataProto, dict[str, float]]:
    """Re-generate the groups of ``output`` (``n`` consecutive rows per prompt, as verl's trainer repeats
    them) whose rewards are all equal, up to ``rounds`` times; rows of a group whose fresh samples differ
    are replaced in place. Returns the output and what happened (logged as metrics)."""
    uniform = _uniform_groups(output, n)
    stats = {"uniform_groups_before": float(len(uniform)), "resampled_groups": 0.0}
    for _ in range(rounds):
        if not uniform:
            break
        rows = [g * n + j for g in uniform for j in range(n)]
        fresh = await generate(prompts.select_idxs(rows))
        still = set(_uniform_groups(fresh, n))
        keep = [i for i, g in enumerate(uniform) if i not in still]
        if keep:
            _replace_rows(output, [uniform[i] * n + j for i in keep for j in range(n)], fresh,
                          [i * n + j for i in keep for j in range(n)])
        stats["resampled_groups"] += len(keep)
        uniform = [g for i, g in enumerate(uniform) if i in still]
    stats["uniform_groups_after"] = float(len(uniform))
    return output, stats


def resample_rounds(config: Any) -> int:
    """``resample_rounds`` of the searchlab loop in the run's agent_loop.yaml (0 without one)."""
    path = config.actor_rollout_ref.rollout.agent.get("agent_loop_config_path")
    if not path:
        return 0
    entries = OmegaConf.to_container(OmegaConf.load(resolve_config_path(path)))
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("name") == AGENT_NAME:
            return int((entry.get("searchlab") or {}).get("resample_rounds", 0))
    return 0


class SearchlabAgentLoopManager(AgentLoopManager):
    """verl's ``AgentLoopManager`` whose Ray workers are :class:`SearchlabAgentLoopWorker`, with dynamic
    sampling of training batches when the run asks for it."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.agent_loop_workers_class = ray.remote(SearchlabAgentLoopWorker)
        super().__init__(*args, **kwargs)
        self.resample_rounds = resample_rounds(self.config)

    @auto_await
    async def generate_sequences(self, prompts: DataProto) -> DataProto:
        generate = AgentLoopManager.generate_sequences.__wrapped__  # type: ignore[attr-defined]
        output: DataProto = await generate(self, prompts)
        n = int(self.rollout_config.n)
        if self.resample_rounds and n > 1 and not prompts.meta_info.get("validate") and "rm_scores" in output.batch:
            output, stats = await resample_uniform_groups(prompts, output, lambda p: generate(self, p), n,
                                                          self.resample_rounds)
            output.meta_info.setdefault("timing", {}).update({f"agent_loop/dynamic_sampling/{k}": v
                                                              for k, v in stats.items()})
            log.info("dynamic sampling: %s", stats)
        return output
