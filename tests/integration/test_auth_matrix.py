"""Who gets in, on all four services: with no key configured (open, except the trainer, which refuses to
start without one), a missing header, a wrong or malformed token, and the right token; the open routes
(``/health``, ``/ready``) answer without one. Then the jobs that call other services (``coldstart``,
``simulator_sft``) succeed against keyed services with the trainer's own service key, which no job config
carries (issue #18: coldstart jobs ran with a stored, masked key and got 401). Real services on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.client import TrainerClient
from shared.processes import Proc, start_service

pytestmark = pytest.mark.slow

KEY = "matrix-key-1f3c"
CALLS = {  # a protected call of each service, answerable by a healthy instance
    "retriever": ("POST", "/retrieve", {"queries": ["Who wrote Hamlet?"], "topk": 1}),
    "judge": ("POST", "/judge", {"method": "em", "items": [{"gold": ["Paris"], "prediction": "Paris"}]}),
    "simulator": ("POST", "/simulate", {"query": "Hamlet", "k": 1}),
    "trainer": ("GET", "/jobs", None),
}


@pytest.fixture(scope="module")
def keyed(small_index: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory,
          logs_dir: Path) -> Iterator[dict[str, Proc]]:
    """The four services, every one requiring ``KEY`` and every client among them sending it."""
    procs: dict[str, Proc] = {}
    try:
        procs["retriever"] = start_service("retriever", {"RETRIEVER_INDEX_DIR": str(small_index),
                                                         "RETRIEVER_API_KEY": KEY}, log_dir=logs_dir)
        procs["judge"] = start_service("judge", {"JUDGE_API_KEY": KEY, "JUDGE_REDIS_URL": "",
                                                 "SEARCHLAB_REDIS_URL": "", "JUDGE_LLM__BACKEND": "local"},
                                       log_dir=logs_dir, timeout_s=180)
        procs["simulator"] = start_service("simulator", {
            "SIMULATOR_API_KEY": KEY, "SIMULATOR_MODE": "corpus", "SIMULATOR_RETRIEVER_URL": procs["retriever"].url,
            "SIMULATOR_RETRIEVER_API_KEY": KEY}, log_dir=logs_dir)
        procs["trainer"] = start_service("trainer", {
            "TRAINER_API_KEY": KEY, "TRAINER_SERVICE_API_KEY": KEY, "TRAINER_REDIS_URL": redis_url,
            "TRAINER_KEY_PREFIX": "auth-matrix", "TRAINER_OUTPUT_DIR": str(tmp_path_factory.mktemp("jobs")),
            "TRAINER_RETRIEVER_URL": procs["retriever"].url, "TRAINER_JUDGE_URL": procs["judge"].url,
            "TRAINER_TORCH_THREADS": "1"}, log_dir=logs_dir)
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def _call(proc: Proc, service: str, headers: dict[str, str]) -> httpx.Response:
    method, path, body = CALLS[service]
    return httpx.request(method, proc.url + path, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize("service", list(CALLS))
@pytest.mark.parametrize("headers,expected", [
    ({}, 401),
    ({"Authorization": "Bearer wrong-key"}, 401),
    ({"Authorization": KEY}, 401),  # no scheme
    ({"Authorization": f"Basic {KEY}"}, 401),
    ({"Authorization": f"Bearer {KEY}x"}, 401),
    ({"Authorization": f"Bearer {KEY}"}, 200),
])
def test_a_keyed_service_lets_in_only_the_right_token(keyed: dict[str, Proc], service: str,
                                                       headers: dict[str, str], expected: int) -> None:
    r = _call(keyed[service], service, headers)
    assert r.status_code == expected, (service, headers, r.text[:300])
    if expected == 401:
        assert r.json()["error"]["code"] == "unauthorized" and KEY not in r.text
    for open_path in ("/health", "/ready"):
        assert httpx.get(keyed[service].url + open_path, timeout=10).status_code == 200


def test_with_no_key_configured_a_service_is_open(small_retriever: Proc) -> None:
    assert _call(small_retriever, "retriever", {}).status_code == 200
    assert _call(small_retriever, "retriever", {"Authorization": "Bearer anything"}).status_code == 200


def test_jobs_reach_keyed_services_with_the_trainers_key(keyed: dict[str, Proc]) -> None:
    client = TrainerClient(keyed["trainer"].url, KEY, timeout_s=30)
    coldstart = client.submit("coldstart", {"qa": ["hotpotqa"], "qa_limit": 4, "ramp_limit": 0})
    sim = client.submit("simulator_sft", {"dataset": "hotpotqa", "limit": 2, "k": 3, "sets_per_query": 1,
                                          "words": 12, "epochs": 1, "batch_size": 2, "max_len": 160,
                                          "label": "judge"})
    done = client.wait(coldstart, timeout_s=300)
    assert done.state == "succeeded", done.error
    result = json.loads(client.artifact(coldstart, "result.json"))
    assert result["searches"] > 0 and "api_key" not in json.dumps(client.job(coldstart).config)
    done = client.wait(sim, timeout_s=600)
    assert done.state == "succeeded", done.error
    assert json.loads(client.artifact(sim, "result.json"))["examples"] == 2

    with pytest.raises(Exception) as err:  # a config never carries the secret
        client.submit("coldstart", {"qa": ["hotpotqa"], "api_key": KEY})
    assert "carries no secret" in str(err.value) and KEY not in str(err.value)
