"""Who gets in, on all four services, each keyed with a key of its own: with no key configured (open, except
the trainer, which refuses to start without one), a missing header, a wrong or malformed token, another
service's key, and the service's own key; the open routes (``/health``, ``/ready``) answer without one.
Then the jobs that call other services (``coldstart``, ``simulator_sft``) succeed against keyed services
with the keys the trainer holds, which no job config carries (issue #18: coldstart jobs ran with a stored,
masked key and got 401): the judge's own key (``TRAINER_JUDGE_API_KEY``) and, for the retriever, the one
fallback key (``TRAINER_SERVICE_API_KEY``). Real services on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.client import TrainerClient
from shared.processes import Proc, start_service

pytestmark = pytest.mark.slow

KEYS = {service: f"matrix-{service}-key-1f3c" for service in ("retriever", "judge", "simulator", "trainer")}
OTHER = {"retriever": "judge", "judge": "simulator", "simulator": "trainer", "trainer": "retriever"}
CALLS = {  # a protected call of each service, answerable by a healthy instance
    "retriever": ("POST", "/retrieve", {"queries": ["Who wrote Hamlet?"], "topk": 1}),
    "judge": ("POST", "/judge", {"method": "em", "items": [{"gold": ["Paris"], "prediction": "Paris"}]}),
    "simulator": ("POST", "/simulate", {"query": "Hamlet", "k": 1}),
    "trainer": ("GET", "/jobs", None),
}


@pytest.fixture(scope="module")
def keyed(small_index: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory,
          logs_dir: Path) -> Iterator[dict[str, Proc]]:
    """The four services, each requiring its own key of ``KEYS``, and every client among them sending it."""
    procs: dict[str, Proc] = {}
    try:
        procs["retriever"] = start_service("retriever", {"RETRIEVER_INDEX_DIR": str(small_index),
                                                         "RETRIEVER_API_KEY": KEYS["retriever"]}, log_dir=logs_dir)
        procs["judge"] = start_service("judge", {"JUDGE_API_KEY": KEYS["judge"], "JUDGE_REDIS_URL": "",
                                                 "SEARCHLAB_REDIS_URL": "", "JUDGE_LLM__BACKEND": "local"},
                                       log_dir=logs_dir, timeout_s=180)
        procs["simulator"] = start_service("simulator", {
            "SIMULATOR_API_KEY": KEYS["simulator"], "SIMULATOR_MODE": "corpus",
            "SIMULATOR_RETRIEVER_URL": procs["retriever"].url, "SIMULATOR_RETRIEVER_API_KEY": KEYS["retriever"]},
            log_dir=logs_dir)
        procs["trainer"] = start_service("trainer", {  # the retriever through the fallback, the judge its own key
            "TRAINER_API_KEY": KEYS["trainer"], "TRAINER_SERVICE_API_KEY": KEYS["retriever"],
            "TRAINER_JUDGE_API_KEY": KEYS["judge"], "TRAINER_REDIS_URL": redis_url,
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
@pytest.mark.parametrize("header,expected", [
    (None, 401),
    ("Bearer wrong-key", 401),
    ("{own}", 401),  # no scheme
    ("Basic {own}", 401),
    ("Bearer {own}x", 401),
    ("Bearer {other}", 401),  # another service's key
    ("Bearer {own}", 200),
])
def test_a_keyed_service_lets_in_only_its_own_token(keyed: dict[str, Proc], service: str, header: str | None,
                                                     expected: int) -> None:
    headers = {"Authorization": header.format(own=KEYS[service], other=KEYS[OTHER[service]])} if header else {}
    r = _call(keyed[service], service, headers)
    assert r.status_code == expected, (service, header, r.text[:300])
    if expected == 401:
        assert r.json()["error"]["code"] == "unauthorized" and not [k for k in KEYS.values() if k in r.text]
    for open_path in ("/health", "/ready"):
        assert httpx.get(keyed[service].url + open_path, timeout=10).status_code == 200


def test_with_no_key_configured_a_service_is_open(small_retriever: Proc) -> None:
    assert _call(small_retriever, "retriever", {}).status_code == 200
    assert _call(small_retriever, "retriever", {"Authorization": "Bearer anything"}).status_code == 200


def test_jobs_reach_keyed_services_with_the_trainers_keys(keyed: dict[str, Proc]) -> None:
    client = TrainerClient(keyed["trainer"].url, KEYS["trainer"], timeout_s=30)
    coldstart = client.submit("coldstart", {"qa": ["hotpotqa"], "qa_limit": 4, "ramp_limit": 0})
    sim = client.submit("simulator_sft", {"dataset": "hotpotqa", "limit": 2, "k": 3, "sets_per_query": 1,
                                          "words": 12, "epochs": 1, "batch_size": 2, "max_len": 160,
                                          "label": "judge"})
    done = client.wait(coldstart, timeout_s=300)
    assert done.state == "succeeded", done.error
    result = json.loads(client.artifact(coldstart, "result.json"))
    shown = json.dumps(client.job(coldstart).model_dump(mode="json")) + client.artifact(coldstart, "result.json").decode()
    assert result["searches"] > 0 and "api_key" not in json.dumps(client.job(coldstart).config)
    assert not [k for k in KEYS.values() if k in shown]
    done = client.wait(sim, timeout_s=600)
    assert done.state == "succeeded", done.error
    assert json.loads(client.artifact(sim, "result.json"))["examples"] == 2

    with pytest.raises(Exception) as err:  # a config never carries the secret
        client.submit("coldstart", {"qa": ["hotpotqa"], "api_key": KEYS["retriever"]})
    assert "carries no secret" in str(err.value) and KEYS["retriever"] not in str(err.value)
