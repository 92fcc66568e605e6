"""The judge under the largest requests it takes: rule scoring runs off the event loop (``/health`` keeps
answering), a request over the scoring budget or the field limits is a 422, and the service is still there
afterwards. Before (issue #18) one ``em`` request under the body limit (30,000 golds, a 300 KB prediction)
hung the judge for minutes."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from shared.processes import Proc

pytestmark = pytest.mark.slow

BODY_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def judge(start_judge) -> Proc:  # type: ignore[no-untyped-def]
    return start_judge(max_body_bytes=str(BODY_LIMIT), max_items="64")


def _item(golds: int, chars: int) -> dict[str, object]:
    return {"question": "q", "gold": [f"gold{i:04d}" for i in range(golds)],
            "prediction": ("word, " * (chars // 6 + 1))[:chars]}


def test_health_answers_while_a_maximal_rule_request_is_scored(judge: Proc) -> None:
    body = {"method": "f1", "items": [_item(256, 8000) for _ in range(9)]}  # just under the default budget
    result: dict[str, object] = {}

    def call() -> None:
        started = time.monotonic()
        r = httpx.post(judge.url + "/judge", json=body, timeout=120)
        result.update(status=r.status_code, seconds=time.monotonic() - started, scores=r.json().get("scores"))

    worker = threading.Thread(target=call)
    worker.start()
    latencies = []
    while worker.is_alive():
        started = time.monotonic()
        assert httpx.get(judge.url + "/health", timeout=10).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    worker.join()
    assert result["status"] == 200 and result["scores"] == [0.0] * 9
    assert len(latencies) >= 3, result  # the request took long enough to be watched
    assert max(latencies) < 1.0, (max(latencies), result)


@pytest.mark.parametrize("body,needle", [
    ({"method": "em", "items": [_item(256, 8000) for _ in range(12)]}, "the limit is 20,000,000"),
    ({"method": "em", "items": [_item(30_000, 10)]}, "gold"),  # the old probe's 30,000 golds
    ({"method": "em", "items": [_item(1, 300_000)]}, "prediction"),  # ... and its 300 KB prediction
    ({"method": "llm", "items": [{"question": "q" * 9000, "gold": ["a"], "prediction": "a"}]}, "question"),
])
def test_over_a_limit_is_a_422_and_the_judge_stays_up(judge: Proc, body: dict[str, object], needle: str) -> None:
    r = httpx.post(judge.url + "/judge", json=body, timeout=60)
    assert r.status_code == 422, r.text[:300]
    assert needle in r.text
    assert httpx.get(judge.url + "/health", timeout=5).status_code == 200
