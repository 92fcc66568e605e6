"""The judge over HTTP: real service, real Redis, SmolLM2 behind a real OpenAI-compatible server."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from shared.client import JudgeClient
from shared.processes import Proc, start_redis

pytestmark = pytest.mark.slow

QUESTIONS = [
    ("Who wrote Hamlet?", ["William Shakespeare"]),
    ("What is the capital of France?", ["Paris"]),
    ("Which planet is known as the Red Planet?", ["Mars"]),
]


def items(predictions: list[str]) -> list[dict[str, object]]:
    return [{"question": QUESTIONS[i % 3][0], "gold": QUESTIONS[i % 3][1], "prediction": p}
            for i, p in enumerate(predictions)]


def metric(proc: Proc, name: str) -> float:
    text = httpx.get(proc.url + "/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def post(proc: Proc, body: object, **kw: object) -> httpx.Response:
    return httpx.post(proc.url + "/judge", json=body, timeout=120, **kw)  # type: ignore[arg-type]


def test_llm_batch_one_verdict_per_item_then_served_from_cache(judge_service: Proc) -> None:
    batch = items(["Shakespeare", "Berlin", "Mars", ""])
    hits0, misses0 = metric(judge_service, "judge_cache_hits_total"), metric(judge_service, "judge_cache_misses_total")

    first = post(judge_service, {"items": batch, "method": "llm"})
    assert first.status_code == 200, first.text
    body = first.json()
    assert len(body["scores"]) == len(body["details"]) == len(batch)
    for score, detail in zip(body["scores"], body["details"], strict=True):
        assert detail["verdict"] in ("correct", "incorrect", "unparseable")
        assert isinstance(detail["raw"], str)
        assert score == (1.0 if detail["verdict"] == "correct" else 0.0)
        assert detail["cached"] is False
    assert metric(judge_service, "judge_cache_misses_total") - misses0 == len(batch)

    again = post(judge_service, {"items": batch, "method": "llm"}).json()
    assert [d["cached"] for d in again["details"]] == [True] * len(batch)
    assert again["scores"] == body["scores"]
    assert [d["verdict"] for d in again["details"]] == [d["verdict"] for d in body["details"]]
    assert metric(judge_service, "judge_cache_hits_total") - hits0 == len(batch)

    # The key is normalized: a differently written but equal prediction is a hit as well.
    variant = post(judge_service, {"items": items(["the SHAKESPEARE!"]), "method": "llm"}).json()
    assert variant["details"][0]["cached"] is True


def test_concurrent_requests_share_backend_batches(judge_service: Proc) -> None:
    calls0 = metric(judge_service, "judge_batch_size_count")
    fresh = [items([f"candidate number {i}"])[0] for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda item: post(judge_service, {"items": [item], "method": "llm"}), fresh))
    assert [r.status_code for r in responses] == [200] * 3
    assert all(len(r.json()["scores"]) == 1 for r in responses)
    # three one-item requests inside one batch window (400 ms) reach the backend in fewer calls
    assert metric(judge_service, "judge_batch_size_count") - calls0 < 3


@pytest.mark.parametrize("method", ["em", "cover_em", "f1", "recall"])
def test_rule_methods_over_http(judge_service: Proc, method: str) -> None:
    body = post(judge_service, {"items": items(["Shakespeare", "Paris", "Venus"]), "method": method}).json()
    assert len(body["scores"]) == 3
    assert body["scores"][2] == 0.0
    assert body["details"][1]["matched_gold"] == "Paris"
    if method != "em":
        assert body["scores"][1] == 1.0


def test_judge_client_is_the_same_path(judge_service: Proc) -> None:
    client = JudgeClient(judge_service.url, timeout_s=120)
    try:
        response = client.judge(items(["Paris", "Lyon"])[1:], method="cover_em")
        assert response.scores == [0.0]
        assert len(client.judge(items(["Shakespeare"]), method="llm").details) == 1
    finally:
        client.close()


def test_ops_routes(judge_service: Proc) -> None:
    assert httpx.get(judge_service.url + "/health").json() == {"status": "ok"}
    assert httpx.get(judge_service.url + "/ready").status_code == 200
    details = httpx.get(judge_service.url + "/info").json()["details"]
    assert details["backend"] == "openai"
    assert details["prompt_version"] == "v1"
    assert details["model"].endswith("smollm2-135m-instruct")
    assert details["cache"] == "redis"
    assert "judge_queue_items" in httpx.get(judge_service.url + "/metrics").text


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"items": [], "method": "llm"}, 422, "invalid_request"),
        ({"items": items(["x"] * 9), "method": "em"}, 422, "invalid_request"),  # max_items is 8
        ({"items": items(["x"]), "method": "bleu"}, 422, "invalid_request"),
        ({"items": [{"question": "q", "gold": [], "prediction": "x"}], "method": "em"}, 422, "invalid_request"),
        ({"items": [{"question": "q", "gold": ["a"]}], "method": "em"}, 422, "invalid_request"),
        ({"items": items(["x" * 20000]), "method": "em"}, 413, "payload_too_large"),  # body limit 16 KiB
    ],
    ids=["empty", "too-many", "unknown-method", "no-gold", "no-prediction", "oversized"],
)
def test_bad_input_is_a_clear_4xx(judge_service: Proc, body: object, status: int, code: str) -> None:
    response = post(judge_service, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_malformed_json_is_400(judge_service: Proc) -> None:
    response = httpx.post(judge_service.url + "/judge", content=b'{"items": [', timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_full_queue_answers_503_with_retry_after(start_judge: object) -> None:
    judge = start_judge(max_items="2", max_queue="2", max_batch="2", backend_concurrency="1",  # type: ignore[operator]
                        batch_wait_ms="0", retry_after_s="3")
    requests = [{"items": items([f"guess {i}-{j}" for j in range(2)]), "method": "llm"} for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda body: post(judge, body), requests))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, [r.text for r in responses]
    assert 200 in statuses and 503 in statuses  # one batch at the backend, one waiting, the rest refused
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "3"
    assert refused.json()["error"]["code"] == "overloaded"
    assert metric(judge, "judge_rejected_total") > 0


def test_redis_down_degrades_to_no_cache(start_judge: object, logs_dir: object) -> None:
    redis = start_redis()
    try:
        judge = start_judge(redis_url=redis.url, redis_retry_s="0")  # type: ignore[operator]
        batch = {"items": items(["Shakespeare", "Paris"]), "method": "llm"}
        assert post(judge, batch).status_code == 200
        assert all(d["cached"] for d in post(judge, batch).json()["details"])
    finally:
        redis.stop()
    # Redis is gone: same batch and a new one still succeed, judged without the cache.
    for body in (batch, {"items": items(["Marlowe"]), "method": "llm"}):
        response = post(judge, body)
        assert response.status_code == 200, response.text
        assert not any(d["cached"] for d in response.json()["details"])
    assert metric(judge, "judge_cache_errors_total") > 0
    assert httpx.get(judge.url + "/ready").status_code == 200
    assert json.loads(httpx.get(judge.url + "/info").text)["details"]["cache"] == "redis"


def test_rewards_take_their_answer_score_from_the_judge(judge_service: Proc) -> None:
    from shared.rewards import RewardConfig, hybrid_reward, judged_rewards

    responses = [
        "<think>easy</think><answer>Paris</answer>",
        "<think>hmm</think><answer>Lyon</answer>",
        "<think>no idea</think>",  # no answer: not sent to the judge, answer part 0
    ]
    golds = [["Paris"], ["Paris"], ["Paris"]]
    config = RewardConfig(allow_stray_text=True)
    client = JudgeClient(judge_service.url, timeout_s=120)
    requests0 = metric(judge_service, 'judge_items_total{method="cover_em"}')
    try:
        rewards = judged_rewards("hybrid", responses, golds, client, questions=["Capital of France?"] * 3,
                                 method="cover_em", config=config)
    finally:
        client.close()
    assert [r.answer for r in rewards] == [1.0, 0.0, 0.0]
    assert metric(judge_service, 'judge_items_total{method="cover_em"}') - requests0 == 2
    local = [hybrid_reward(r, g, config=RewardConfig(allow_stray_text=True, metric="cover_em"))
             for r, g in zip(responses, golds, strict=True)]
    assert [r.total for r in rewards] == [r.total for r in local]
