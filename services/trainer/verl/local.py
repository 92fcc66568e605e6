"""verl's agent-loop worker in this process, for where Ray actors and GPU servers are not (tests, benches).

In a verl run, ``AgentLoopManager`` starts ``AgentLoopWorker`` Ray actors, each with an
``AsyncLLMServerManager`` over the ``SGLangHttpServer`` actors (GPU SGLang engines) and handles of the
reward-loop workers. Here the same worker class (searchlab's, which adds the global step) is built
directly, with verl's own hook for a given server manager (``if not hasattr(self, "server_manager")``):
:class:`~services.trainer.verl.server_manager.HTTPServerManager` over SGLang-compatible HTTP servers, and
:class:`LocalActor` answering ``handle.compute_score.remote(data)`` as a Ray actor handle would. Everything
inside ``generate_sequences`` (loop selection, the registry, hydra instantiation, padding, streamed
rewards, the output ``DataProto``) is verl's code, unchanged.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from services.trainer.verl.manager import SearchlabAgentLoopWorker
from services.trainer.verl.server_manager import HTTPServerManager


class LocalActor:
    """``handle.method.remote(...)`` -> the local object's coroutine (what awaiting a Ray actor call gives)."""

    def __init__(self, obj: Any):
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        return SimpleNamespace(remote=getattr(self._obj, name))


class LocalAgentLoopWorker(SearchlabAgentLoopWorker):
    """searchlab's verl agent-loop worker, constructed in this process with the given server manager."""

    def __init__(self, config: Any, server_manager: Any, reward_worker: Any = None):
        self.server_manager = server_manager
        handles: Any = [LocalActor(reward_worker)] if reward_worker is not None else None
        super().__init__(config, servers=[], load_balancer_handle=cast(Any, None), reward_loop_worker_handles=handles)


def http_server_manager(config: Any, urls: list[str]) -> HTTPServerManager:
    """An :class:`HTTPServerManager` sized by the run's rollout config."""
    rollout = config.actor_rollout_ref.rollout
    return HTTPServerManager(urls, prompt_length=int(rollout.prompt_length),
                             response_length=int(rollout.response_length),
                             max_model_len=int(rollout.prompt_length) + int(rollout.response_length))
