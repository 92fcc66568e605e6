"""verl's ``AsyncLLMServerManager`` over SGLang-compatible HTTP servers, for where verl's Ray actors are not.

In a verl run the agent loop generates through ``AsyncLLMServerManager.generate``: a Ray call to an
``SGLangHttpServer`` actor, which turns the request into SGLang's ``GenerateReqInput`` and returns a
``TokenOutput``. Those actors wrap GPU servers, so on a CPU machine (the tests, ``bench/verl_loop.py``)
this class stands in for the pair: the same ``generate`` signature and ``TokenOutput``, the same
``max_new_tokens`` rule (asked, else what the response length leaves; never beyond the context), the same
least-loaded-then-sticky routing per request id, over ``POST /generate`` of each server (SGLang's own
endpoint, or searchlab's CPU policy server, which speaks it). ``server_addresses`` are what verl keys its
handles by, so the loop's queue mode finds the servers the same way.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from cachetools import LRUCache
from verl.workers.rollout.replica import TokenOutput

from shared.client import ServiceClient


class _Server(ServiceClient):
    service = "rollout-server"


class HTTPServerManager:
    """``generate(request_id, *, prompt_ids, sampling_params) -> TokenOutput`` over HTTP servers."""

    def __init__(self, base_urls: list[str], *, prompt_length: int, response_length: int, max_model_len: int,
                 api_key: str | None = None, timeout_s: float = 600.0):
        if not base_urls:
            raise ValueError("HTTPServerManager needs at least one server URL")
        self.servers = {url.rstrip("/"): _Server(url, api_key, timeout_s=timeout_s, max_retries=2)
                        for url in base_urls}
        self.server_addresses = [u.split("://", 1)[-1] for u in self.servers]
        self.prompt_length = prompt_length
        self.response_length = response_length
        self.max_model_len = max_model_len
        self._inflight: Counter[str] = Counter()
        self._sticky: LRUCache[str, str] = LRUCache(maxsize=10_000)  # as verl's load balancer keeps them

    def _acquire(self, request_id: str) -> str:
        url = self._sticky.get(request_id) or min(self.servers, key=lambda u: self._inflight[u])
        self._sticky[request_id] = url
        self._inflight[url] += 1
        return url

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       image_data: list[Any] | None = None, video_data: list[Any] | None = None) -> TokenOutput:
        params = dict(sampling_params)  # verl's server pops from its (Ray-copied) dict; so do we, on a copy
        room = self.max_model_len - len(prompt_ids)
        if room < 0:
            raise ValueError(f"Prompt length ({len(prompt_ids)}) exceeds the model's maximum context length "
                             f"({self.max_model_len}).")
        if "max_new_tokens" in params:
            wanted = params.pop("max_new_tokens")
        elif "max_tokens" in params:
            wanted = params.pop("max_tokens")
        else:
            wanted = min(self.response_length, self.prompt_length + self.response_length - len(prompt_ids))
        params["max_new_tokens"] = max(0, min(int(wanted), room))
        return_logprob = bool(params.pop("logprobs", False))
        url = self._acquire(request_id)
        try:
            data = (await self.servers[url].arequest("POST", "/generate", json={
                "input_ids": prompt_ids, "sampling_params": params, "return_logprob": return_logprob})).json()
        finally:
            self._inflight[url] -= 1
        meta = data.get("meta_info") or {}
        reason = meta.get("finish_reason") or {}
        if return_logprob:
            triples = meta.get("output_token_logprobs") or []
            token_ids, log_probs = [int(t[1]) for t in triples], [float(t[0] or 0.0) for t in triples]
        else:
            token_ids, log_probs = [int(t) for t in data.get("output_ids", [])], None
        return TokenOutput(token_ids=token_ids, log_probs=log_probs,
                           stop_reason=reason.get("type") if isinstance(reason, dict) else None,
                           extra_fields={"global_steps": None})

    async def close(self) -> None:
        for server in self.servers.values():
            await server.aclose()
