"""A policy server speaking SGLang's native ``/generate``, backed by the in-process model.

On GPU clusters rollout workers send token ids to an SGLang server and get token ids and
log-probs back (``WORKER_LLM__BACKEND=openai``). This server answers the same request on CPU
with the embedded model (or a checkpoint), so the remote-generation path runs, and is tested,
without a GPU; concurrent requests are coalesced into one batched decode.

    POLICY_MODEL=smollm2 POLICY_PORT=30000 python -m services.trainer.rollout.policy_server

Request (SGLang): ``{"input_ids": [...], "sampling_params": {"max_new_tokens", "temperature",
"top_p", "stop"}, "return_logprob": true}``; response: ``{"text", "output_ids", "meta_info":
{"output_token_logprobs": [[logprob, token_id, null], ...], "finish_reason": {"type", "matched"},
"prompt_tokens", "completion_tokens"}}``. Log-probs are of the model's own distribution (temperature 1),
as an SGLang server started with ``SGLANG_RETURN_ORIGINAL_LOGPROB=1`` returns them.

``POST /update_weights_from_disk`` (SGLang's ``UpdateWeightFromDiskReqInput``: ``model_path``,
``weight_version``, ...) loads a checkpoint folder and swaps it in once the decode in flight is done;
every decode that starts afterwards uses the new weights. Answer: ``{"success", "message",
"num_paused_requests"}``, 200, or 400 with ``success: false`` (a folder that does not load) as SGLang
does. ``GET /weight_version`` and ``/model_info`` say which weights are loaded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from shared.batching import MicroBatcher
from shared.config import Device, LLMSettings, ServiceSettings
from shared.llm import Generation, LocalBackend, SamplingParams
from shared.service import ServiceError, create_app, serve

log = logging.getLogger(__name__)


class PolicySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="POLICY_", extra="ignore")

    port: int = 30000
    model: str = "smollm2"  # smollm2 | a checkpoint folder
    dtype: str = "float32"  # float32 | bfloat16
    device: Device = "auto"  # CUDA when a GPU is visible, else the CPU
    max_batch: int = 16  # requests decoded together
    batch_wait_ms: float = 5.0  # how long the first request waits for company
    max_queue: int = 256  # beyond this: 503 + Retry-After
    max_new_tokens_cap: int = 2048
    weight_version: str = "default"  # the start weights' version tag (SGLang's default too)


class SGLangSampling(BaseModel):
    max_new_tokens: int = Field(default=128, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] | str | None = None
    sampling_seed: int | None = None
    min_new_tokens: int = Field(default=0, ge=0)


class GenerateRequest(BaseModel):
    input_ids: list[int] = Field(min_length=1)
    sampling_params: SGLangSampling = Field(default_factory=SGLangSampling)
    return_logprob: bool = False


class UpdateWeightsRequest(BaseModel):
    """SGLang's ``UpdateWeightFromDiskReqInput`` (fields we do not act on are accepted and ignored)."""

    model_path: str = Field(min_length=1, max_length=4096)  # a model folder this server can read
    load_format: str | None = Field(default=None, max_length=64)  # None | "auto": safetensors / bin as found
    abort_all_requests: bool = False  # ours never aborts: the decode in flight finishes on the old weights
    weight_version: str | None = Field(default=None, max_length=256)


class Weights:
    """The model being served and its version tag; a swap waits for the decode in flight."""

    def __init__(self, backend: LocalBackend, version: str):
        self.backend = backend
        self.version = version
        self.lock = threading.Lock()  # held by every decode and by the swap

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Generation]:
        with self.lock:
            return self.backend.generate(prompts, sampling)

    def swap(self, backend: LocalBackend, version: str | None) -> None:
        with self.lock:
            self.backend = backend
            if version is not None:
                self.version = version


def _sampling_key(request: GenerateRequest) -> str:
    return request.sampling_params.model_dump_json()


def _load(path: str, settings: PolicySettings) -> LocalBackend:
    dtype = "bfloat16" if settings.dtype == "bfloat16" else "float32"
    return LocalBackend(LLMSettings(model=path, dtype=dtype, device=settings.device, max_batch_size=settings.max_batch))


def new_batcher(weights: Weights, settings: PolicySettings) -> MicroBatcher[GenerateRequest, Generation]:
    """The shared micro-batcher over the model: requests with equal sampling parameters are decoded
    together; a batch waits ``batch_wait_ms`` from when the previous decode is done (``wait="open"``)."""

    def generate(requests: list[GenerateRequest]) -> list[Generation]:
        params = requests[0].sampling_params  # one group: one sampling setting
        stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
        sampling = SamplingParams(max_new_tokens=min(params.max_new_tokens, settings.max_new_tokens_cap),
                                  temperature=params.temperature, top_p=params.top_p, stop=stop,
                                  seed=params.sampling_seed, min_content_tokens=params.min_new_tokens)
        try:
            return weights.generate([r.input_ids for r in requests], sampling)
        except (RuntimeError, ValueError, IndexError) as exc:  # e.g. an id outside the vocabulary
            raise ServiceError(400, "generation_failed", str(exc)) from exc

    return MicroBatcher(generate, max_batch=settings.max_batch, max_wait_s=settings.batch_wait_ms / 1000,
                        max_queue=settings.max_queue, wait="open", group_key=_sampling_key,
                        name="the policy server's queue", unit="requests")


def to_sglang(gen: Generation, prompt_len: int, with_logprobs: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "finish_reason": {"type": "length"} if gen.finish_reason == "length"
        else {"type": "stop", "matched": gen.stop_string},
        "prompt_tokens": prompt_len, "completion_tokens": len(gen.token_ids),
    }
    if with_logprobs:
        meta["output_token_logprobs"] = [[lp, tok, None] for lp, tok in zip(gen.logprobs, gen.token_ids, strict=True)]
    return {"text": gen.text, "output_ids": gen.token_ids, "meta_info": meta}


def build_app(settings: PolicySettings | None = None) -> FastAPI:
    settings = settings or PolicySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.weights = Weights(await asyncio.to_thread(_load, settings.model, settings), settings.weight_version)
        app.state.batcher = new_batcher(app.state.weights, settings)
        app.state.update_lock = asyncio.Lock()  # one weight update at a time
        app.state.ready = True
        yield
        await app.state.batcher.close()

    app = create_app("policy", settings, lifespan,
                     info=lambda a: {"model": settings.model, "max_batch": settings.max_batch})

    @app.post("/generate")
    async def generate(body: GenerateRequest) -> dict[str, Any]:
        vocab = len(app.state.weights.backend.tokenizer)
        if max(body.input_ids) >= vocab or min(body.input_ids) < 0:
            raise ServiceError(422, "invalid_request", f"input_ids must be token ids in [0, {vocab})")
        gen = await app.state.batcher.submit([body])[0]
        return to_sglang(gen, len(body.input_ids), body.return_logprob)

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(body: UpdateWeightsRequest) -> JSONResponse:
        weights: Weights = app.state.weights
        if body.load_format not in (None, "auto"):
            return _update_failed(f"load_format {body.load_format!r} is not supported here (use auto)")
        async with app.state.update_lock:
            try:
                backend = await asyncio.to_thread(_load, body.model_path, settings)
            except (OSError, ValueError) as exc:  # ModelNotFound is an OSError; a broken folder a ValueError
                return _update_failed(f"{body.model_path!r} did not load: {type(exc).__name__}: {exc}")
            if len(backend.tokenizer) != len(weights.backend.tokenizer):
                return _update_failed(f"{body.model_path!r} has another vocabulary ({len(backend.tokenizer)} "
                                      f"tokens, not {len(weights.backend.tokenizer)})")
            await asyncio.to_thread(weights.swap, backend, body.weight_version)
        log.info("weights updated from %s (version %s)", body.model_path, weights.version)
        return JSONResponse({"success": True, "message": f"Succeeded to update model weights from {body.model_path}.",
                             "num_paused_requests": 0})

    @app.get("/weight_version")
    async def weight_version() -> dict[str, Any]:
        return {"weight_version": app.state.weights.version}

    @app.get("/model_info")
    async def model_info() -> dict[str, Any]:
        return {"model_path": str(app.state.weights.backend.path), "is_generation": True,
                "weight_version": app.state.weights.version}

    return app


def _update_failed(message: str) -> JSONResponse:
    """SGLang's failure answer of ``/update_weights_from_disk`` (400, ``success: false``)."""
    log.warning("weight update refused: %s", message)
    return JSONResponse({"success": False, "message": message, "num_paused_requests": 0}, status_code=400)


def main() -> None:
    settings = PolicySettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
