"""verl's agent-loop manager with the one thing searchlab's loop needs from it: the global step.

verl's trainer puts ``global_steps`` (and ``validate``) into the batch's ``meta_info``, but an agent
loop's ``run()`` only receives the batch's columns. ZeroSearch's noise curriculum moves with the step,
so this worker copies both into every sample's row (``searchlab_step``, ``searchlab_validate``) before
verl's own ``generate_sequences`` runs, and takes them out of the output again. Selected with
``actor_rollout_ref.rollout.agent.agent_loop_manager_class`` (verl's ``ray_trainer`` loads it by name).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
from verl.experimental.agent_loop.agent_loop import AgentLoopManager, AgentLoopWorker
from verl.protocol import DataProto

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


class SearchlabAgentLoopManager(AgentLoopManager):
    """verl's ``AgentLoopManager`` whose Ray workers are :class:`SearchlabAgentLoopWorker`."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.agent_loop_workers_class = ray.remote(SearchlabAgentLoopWorker)
        super().__init__(*args, **kwargs)
