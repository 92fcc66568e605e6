"""SGLang's native HTTP API as searchlab speaks it (sglang 0.5.6, ``srt/entrypoints/http_server.py``).

- ``POST /generate``: token ids in, token ids and log-probs out (:func:`sglang_generate_body`,
  :func:`parse_sglang_generate`).
- ``POST /update_weights_from_disk``: the server loads new weights from a folder it can read
  (``UpdateWeightFromDiskReqInput``: ``model_path``, ``load_format``, ``abort_all_requests``,
  ``weight_version``, ``flush_cache`` ...); the answer is ``{"success", "message",
  "num_paused_requests"}``, 200 on success and 400 on failure (:func:`update_weights_body`,
  :func:`check_update_weights`).

Log-probs: SGLang 0.5.6 returns those of the *temperature-scaled* distribution
(``log softmax(logits / T)``) unless the server runs with ``SGLANG_RETURN_ORIGINAL_LOGPROB=1``
(``srt/layers/sampler.py``); searchlab's local engine wants temperature 1, so its rollout servers
set it (docs/gpu.md). Our CPU policy server (``services/trainer/rollout/policy_server.py``) always
returns temperature-1 log-probs, i.e. behaves as a server with that variable set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.llm import Generation, SamplingParams

UPDATE_WEIGHTS = "/update_weights_from_disk"


class WeightSyncError(RuntimeError):
    """A rollout server did not load the weights it was asked to: nothing may be generated with it
    for that policy version."""


def sglang_generate_body(prompt: list[int], sampling: SamplingParams,
                         extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """SGLang's native ``/generate`` request: token ids in, token ids and log-probs out.

    ``extra``: more SGLang sampling parameters (``top_k``, ``repetition_penalty``, ...)."""
    params: dict[str, Any] = {**(extra or {}), "max_new_tokens": sampling.max_new_tokens,
                              "temperature": sampling.temperature, "top_p": sampling.top_p}
    if sampling.stop:
        params["stop"] = sampling.stop
    if sampling.seed is not None:
        params["sampling_seed"] = sampling.seed
    if sampling.min_content_tokens:
        params["min_new_tokens"] = sampling.min_content_tokens
    return {"input_ids": prompt, "sampling_params": params, "return_logprob": True, "logprob_start_len": -1}


def parse_sglang_generate(data: dict[str, Any]) -> Generation:
    """An SGLang ``/generate`` response -> :class:`shared.llm.Generation`."""
    from shared.llm import Generation

    meta = data.get("meta_info") or {}
    triples = meta.get("output_token_logprobs") or []
    token_ids = [int(t[1]) for t in triples]
    logprobs = [float(t[0]) if t[0] is not None else 0.0 for t in triples]
    reason = meta.get("finish_reason") or {}
    kind = reason.get("type") if isinstance(reason, dict) else str(reason)
    matched = reason.get("matched") if isinstance(reason, dict) else None
    return Generation(token_ids=token_ids, logprobs=logprobs, text=str(data.get("text", "")),
                      finish_reason="length" if kind == "length" else "stop",
                      stop_string=matched if isinstance(matched, str) else None)


def update_weights_body(model_path: str, weight_version: str | None = None) -> dict[str, Any]:
    """``POST /update_weights_from_disk``: load ``model_path`` (a folder the *server* can read) and tag
    the weights ``weight_version``. Requests in flight finish first (the server's writer lock)."""
    body: dict[str, Any] = {"model_path": model_path, "abort_all_requests": False, "flush_cache": True}
    if weight_version is not None:
        body["weight_version"] = weight_version
    return body


def check_update_weights(data: Any) -> str:
    """The server's message if the update succeeded, else :class:`WeightSyncError`."""
    if not isinstance(data, dict) or data.get("success") is not True:
        message = data.get("message") if isinstance(data, dict) else data
        raise WeightSyncError(f"the rollout server did not load the weights: {message!r:.300}")
    return str(data.get("message", ""))
