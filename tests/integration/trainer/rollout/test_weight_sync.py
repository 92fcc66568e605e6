"""Weights reach the rollout server: the CPU policy server's SGLang ``/update_weights_from_disk``, and a
worker on a remote backend that moves the server to each policy version before generating with it.

Two small Llamas made from a config (SmolLM2's vocabulary, different random weights) stand for policy
versions 0 and 1: after the bump, the log-probs a generation returns are those of the new weights.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from services.trainer.rollout.queue import EpisodeQueue
from shared.config import LLMSettings
from shared.llm import LocalBackend, OpenAIBackend, SamplingParams
from shared.models import small_model
from shared.processes import Proc, free_port, spawn, wait_http
from shared.schemas import EpisodeRequest, EpisodeSampling, PolicyRef
from shared.sglang import WeightSyncError

pytestmark = pytest.mark.slow

SAMPLING = SamplingParams(max_new_tokens=8)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("policy-versions")
    return small_model(root / "v0", seed=0), small_model(root / "v1", seed=1)


@pytest.fixture()
def policy_server(versions: tuple[Path, Path], logs_dir: Path) -> Iterator[Proc]:
    port = free_port()
    proc = spawn("policy-sync", [sys.executable, "-m", "services.trainer.rollout.policy_server"], log_dir=logs_dir,
                 env={"POLICY_PORT": str(port), "POLICY_MODEL": str(versions[0]), "POLICY_BATCH_WAIT_MS": "1"})
    proc.url = f"http://127.0.0.1:{port}"
    wait_http(proc, proc.url + "/ready", 180)
    yield proc
    proc.stop()


def _close(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-3


def test_after_a_weight_update_log_probs_are_the_new_weights(policy_server: Proc,
                                                             versions: tuple[Path, Path]) -> None:
    old, new = (LocalBackend(LLMSettings(model=str(p), dtype="float32")) for p in versions)
    remote = OpenAIBackend(LLMSettings(backend="openai", base_url=policy_server.url, model=str(versions[0])))
    prompt = old.apply_chat_template([{"role": "user", "content": "Who wrote Hamlet?"}])

    before = remote.generate([prompt], SAMPLING)[0]
    assert _close(before.logprobs, old.sequence_logprobs(prompt, before.token_ids))

    message = remote.load_weights(str(versions[1]), "job@v1")
    assert "updat" in message.lower()
    assert httpx.get(policy_server.url + "/weight_version", timeout=10).json() == {"weight_version": "job@v1"}
    after = remote.generate([prompt], SAMPLING)[0]
    assert _close(after.logprobs, new.sequence_logprobs(prompt, after.token_ids))
    assert not _close(after.logprobs, old.sequence_logprobs(prompt, after.token_ids))

    # a folder that does not load: SGLang's 400 + success false; the server keeps serving v1
    with pytest.raises(WeightSyncError, match="did not load"):
        remote.load_weights("/nonexistent/checkpoint", "job@v2")
    assert httpx.get(policy_server.url + "/weight_version", timeout=10).json() == {"weight_version": "job@v1"}
    again = remote.generate([prompt], SAMPLING)[0]
    assert again.token_ids == after.token_ids and _close(again.logprobs, after.logprobs)


@pytest.mark.parametrize("body", [{}, {"model_path": ""}, {"model_path": 3}, {"model_path": "x" * 5000}])
def test_bad_weight_update_requests_are_4xx(policy_server: Proc, body: dict[str, object]) -> None:
    response = httpx.post(policy_server.url + "/update_weights_from_disk", json=body, timeout=30)
    assert 400 <= response.status_code < 500


def _episode(i: int, policy: PolicyRef) -> EpisodeRequest:
    return EpisodeRequest(job_id="sync", episode_id=f"ep{i}", method="direct", search_backend="none",
                          question="Who wrote Hamlet?", ground_truth=["Shakespeare"], policy=policy,
                          sampling=EpisodeSampling(max_new_tokens=8, temperature=0.0))


def test_a_worker_moves_its_rollout_server_to_each_version_and_never_runs_on_old_weights(
        policy_server: Proc, versions: tuple[Path, Path], private_redis: Proc,
        start_worker: Callable[..., Proc], waiter: Callable[..., None]) -> None:
    q = EpisodeQueue(private_redis.url)
    w = start_worker(private_redis.url, "remote", llm__backend="openai", llm__base_url=policy_server.url,
                     llm__model=str(versions[0]), max_attempts=2, batch_wait_ms=0)
    waiter(lambda: "remote" in q.workers(), 240, "the worker to start", [w])

    q.enqueue([_episode(1, PolicyRef(owner="sync", version=1, path=str(versions[1])))])
    (result,) = q.wait("sync", 1, timeout_s=240)
    assert result.error is None and result.policy_version == 1
    new = LocalBackend(LLMSettings(model=str(versions[1]), dtype="float32"))
    policy = [i for i, m in enumerate(result.loss_mask) if m]
    want = new.sequence_logprobs(result.prompt_ids, result.response_ids)
    assert policy and _close([result.logprobs[i] for i in policy], [want[i] for i in policy])
    assert httpx.get(policy_server.url + "/weight_version", timeout=10).json() == {"weight_version": "sync@v1"}

    # v2's folder is not there: its episode is re-queued, counted, then dead-lettered; never generated on v1
    q.enqueue([_episode(2, PolicyRef(owner="sync", version=2, path="/nonexistent/v2"))])
    results = q.wait("sync", 2, timeout_s=240)
    failed = next(r for r in results if r.episode_id == "ep2")
    assert failed.finish_reason == "error" and "weight sync of sync@v2" in (failed.error or "")
    assert failed.response_ids == []
    waiter(lambda: q.workers().get("remote", {}).get("weight_sync_failures") == 2, 30,
           "the worker to count both failed deliveries", [w])
    assert [d["episode"] for d in q.dead_letters()] == ["ep2"]
    assert w.alive()
