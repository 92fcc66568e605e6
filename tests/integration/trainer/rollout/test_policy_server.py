"""Remote generation: the openai backend's SGLang-native ``generate`` against a real policy server."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest

from shared.config import LLMSettings
from shared.llm import LocalBackend, OpenAIBackend, SamplingParams
from shared.processes import Proc, free_port, spawn, wait_http

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def policy_server(logs_dir: object) -> Iterator[Proc]:
    port = free_port()
    proc = spawn("policy", [sys.executable, "-m", "services.trainer.rollout.policy_server"],
                 env={"POLICY_PORT": str(port), "POLICY_MAX_BATCH": "8", "POLICY_BATCH_WAIT_MS": "50"})
    proc.url = f"http://127.0.0.1:{port}"
    wait_http(proc, proc.url + "/ready", 180)
    yield proc
    proc.stop()


def test_remote_generate_matches_local_model(policy_server: Proc) -> None:
    remote = OpenAIBackend(LLMSettings(backend="openai", base_url=policy_server.url, model="smollm2"))
    local = LocalBackend(LLMSettings(model="smollm2", dtype="float32"))
    prompts = [local.apply_chat_template([{"role": "user", "content": q}])
               for q in ("What is the capital of France?", "Name a planet.", "Say hi.")]
    sampling = SamplingParams(max_new_tokens=12, stop=["</answer>"])
    got = remote.generate(prompts, sampling)  # sent concurrently: the server batches them
    want = local.generate(prompts, sampling)
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids
        assert g.text == w.text
        assert max(abs(a - b) for a, b in zip(g.logprobs, w.logprobs, strict=True)) < 1e-3
        assert g.finish_reason == w.finish_reason


@pytest.mark.parametrize("body", [{"input_ids": []}, {"input_ids": [10**9]}, {"input_ids": "abc"},
                                  {"input_ids": [1], "sampling_params": {"max_new_tokens": 0}}])
def test_bad_generate_requests_are_4xx(policy_server: Proc, body: dict[str, object]) -> None:
    response = httpx.post(policy_server.url + "/generate", json=body, timeout=30)
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["message"]
