"""The retriever service on loopback over a real index: verl's own client, SkyRL, modes, errors, ops."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from shared.client import RetrieverClient
from shared.data import dataset_path, open_text
from shared.processes import start_service
from shared.schemas import RetrieveResponse


def _questions(n: int) -> list[dict]:
    with open_text(dataset_path("hotpotqa")) as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def test_verl_search_client_gets_formatted_documents(retriever_url: str) -> None:
    from verl.tools.utils.search_r1_like_utils import perform_single_search_batch

    question = _questions(1)[0]
    text, meta = perform_single_search_batch(retriever_url + "/retrieve", [question["question"]], topk=3)
    assert meta["status"] == "success", meta
    assert meta["api_request_error"] is None
    assert meta["total_results"] == 3
    formatted = json.loads(text)["result"]
    assert re.match(r'Doc 1 \(Title: ".+"\)\n\S', formatted), formatted[:200]
    assert "Doc 3 (Title: " in formatted and "Doc 4" not in formatted
    # The gold passage of this question ("Sergei Aleksandrovich Tokarev") is found.
    assert '(Title: "Sergei Aleksandrovich Tokarev")' in formatted


def test_search_r1_request_and_response_shape(retriever_url: str) -> None:
    body = {"queries": ["Moscow State University founded", "Florida Senate members"], "topk": 2,
            "return_scores": True}
    raw = httpx.post(retriever_url + "/retrieve", json=body, timeout=60)
    assert raw.status_code == 200
    data = raw.json()
    assert list(data) == ["result"] and len(data["result"]) == 2
    for hits in data["result"]:
        assert len(hits) == 2
        for hit in hits:
            assert set(hit) == {"document", "score"} and set(hit["document"]) == {"id", "contents"}
            title, _, text = hit["document"]["contents"].partition("\n")
            assert title.startswith('"') and title.endswith('"') and text
        assert hits[0]["score"] >= hits[1]["score"]
    assert "Moscow State University" in data["result"][0][0]["document"]["contents"]
    # return_scores=false keeps the same shape (Search-R1 dropped the scores and broke clients).
    body["return_scores"] = False
    same = httpx.post(retriever_url + "/retrieve", json=body, timeout=60).json()
    assert [[h["document"]["id"] for h in hits] for hits in same["result"]] == \
        [[h["document"]["id"] for h in hits] for hits in data["result"]]
    assert "score" in same["result"][0][0]


def test_skyrl_singular_query(retriever_url: str) -> None:
    data = httpx.post(retriever_url + "/retrieve", json={"query": "Ken Pruitt Republican", "topk": 3},
                      timeout=60).json()
    assert len(data["result"]) == 1 and len(data["result"][0]) == 3
    assert '"Ken Pruitt"' in data["result"][0][0]["document"]["contents"]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_modes_find_the_gold_passage(retriever_url: str, mode: str) -> None:
    client = RetrieverClient(retriever_url)
    hits = client.retrieve(["Benedict Arnold defector Continental Army British"], topk=5, mode=mode)[0]
    assert len(hits) == 5
    assert any(h.document.id == "wiki-002202" for h in hits), [h.document.id for h in hits]  # Benedict Arnold


def test_default_topk_is_three(retriever_url: str) -> None:
    data = httpx.post(retriever_url + "/retrieve", json={"queries": ["John André"]}, timeout=60).json()
    assert len(data["result"][0]) == 3


async def test_concurrent_requests_are_coalesced_and_answered_in_order(retriever_url: str) -> None:
    questions = [q["question"] for q in _questions(24)]
    client = RetrieverClient(retriever_url, timeout_s=120)
    before = _metric(retriever_url, "searchlab_retriever_batches_total")
    try:
        together = await asyncio.gather(*(client.aretrieve([q], topk=3) for q in questions))
    finally:
        await client.aclose()
    batches = _metric(retriever_url, "searchlab_retriever_batches_total") - before
    assert batches < len(questions), "concurrent single-query requests should share encoder batches"
    # Each answer belongs to its own question: equal to asking alone (the cache may serve these).
    alone = RetrieverClient(retriever_url).retrieve(questions[:4], topk=3)
    for got, expected in zip(together[:4], alone, strict=True):
        assert [h.document.id for h in got[0]] == [h.document.id for h in expected]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"queries": []}, 422, "empty"),
        ({"queries": ["ok", "  "]}, 422, "query 1 is empty"),
        ({"query": ""}, 422, "empty"),
        ({"queries": ["ok"], "topk": 0}, 422, "topk"),
        ({"queries": ["ok"], "topk": -3}, 422, "topk"),
        ({"queries": ["ok"], "topk": 21}, 422, "at most 20"),
        ({"queries": ["q"] * 17}, 422, "too many queries"),
        ({"queries": "not a list"}, 422, "queries"),
        ({"queries": ["ok", 7]}, 422, "queries.1"),
        ({"queries": ["ok"], "topk": "three"}, 422, "topk"),
        ({"queries": ["ok"], "mode": "semantic"}, 422, "mode"),
        ({"topk": 3}, 422, "queries"),
        ({"queries": ["a"], "query": "b"}, 422, "not both"),
        ([1, 2], 422, "object"),
    ],
)
def test_bad_input_is_a_clear_4xx(retriever_url: str, body: object, status: int, says: str) -> None:
    response = httpx.post(retriever_url + "/retrieve", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error["message"], error


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_non_json_is_400(retriever_url: str, content_type: str) -> None:
    response = httpx.post(retriever_url + "/retrieve", content=b'{"queries": [', timeout=30,
                          headers={"content-type": content_type})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_body_over_one_mib_is_413(retriever_url: str) -> None:
    body = json.dumps({"queries": ["x" * (1 << 20)]}).encode()
    response = httpx.post(retriever_url + "/retrieve", content=body, timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_ops_routes(retriever_url: str, small_index: object) -> None:
    assert httpx.get(retriever_url + "/health").json() == {"status": "ok"}
    assert httpx.get(retriever_url + "/ready").status_code == 200
    details = httpx.get(retriever_url + "/info").json()["details"]
    manifest = details["manifest"]
    assert manifest["encoder"]["name"] == "minilm" and manifest["encoder"]["dim"] == 384
    assert manifest["index"]["type"] == "flat" and manifest["corpus"]["count"] > 500
    assert details["modes"] == ["dense", "bm25", "hybrid"]
    RetrieveResponse.model_validate(httpx.post(retriever_url + "/retrieve", json={"queries": ["x y"]}).json())
    metrics = httpx.get(retriever_url + "/metrics").text
    for name in ("searchlab_retriever_batch_size_bucket", "searchlab_retriever_queries_total",
                 'searchlab_request_seconds_bucket{le="0.1",route="/retrieve"'):
        assert name in metrics


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_missing_index_stops_the_service_with_the_reason(tmp_path, logs_dir) -> None:
    env = {"RETRIEVER_INDEX_DIR": str(tmp_path / "no-index"), "RETRIEVER_BUILD_IF_MISSING": "false"}
    with pytest.raises(RuntimeError, match="exited") as failure:
        start_service("retriever", env, log_dir=logs_dir, timeout_s=120)
    assert "no index at" in str(failure.value)


def test_a_killed_search_process_is_a_503_then_replaced(small_index, logs_dir) -> None:
    """The index runs in a child process (no GIL shared with HTTP); if it dies, the request that
    was running gets a 503 with Retry-After, a new child is started, and service resumes."""
    import os
    import signal
    import time

    proc = start_service("retriever", {"RETRIEVER_INDEX_DIR": str(small_index), "RETRIEVER_BUILD_IF_MISSING": "false"},
                         log_dir=logs_dir / "retriever-kill")
    try:
        body = {"queries": ["Moscow State University founded"], "topk": 2}
        assert httpx.post(proc.url + "/retrieve", json=body, timeout=60).status_code == 200
        child = httpx.get(proc.url + "/info", timeout=10).json()["details"]["search_process"]["pid"]
        assert child != proc.popen.pid
        os.kill(child, signal.SIGKILL)
        time.sleep(0.5)
        body["queries"] = ["Florida Senate members"]  # not cached
        failed = httpx.post(proc.url + "/retrieve", json=body, timeout=60)
        assert failed.status_code == 503, failed.text
        assert failed.json()["error"]["code"] == "search_restarting" and failed.headers["Retry-After"]
        deadline = time.monotonic() + 120
        while (again := httpx.post(proc.url + "/retrieve", json=body, timeout=60)).status_code != 200:
            assert again.status_code == 503 and time.monotonic() < deadline, again.text
            time.sleep(1)
        assert "Florida Senate" in again.json()["result"][0][0]["document"]["contents"]
        assert httpx.get(proc.url + "/info", timeout=10).json()["details"]["search_process"]["pid"] not in (child, proc.popen.pid)
    finally:
        proc.stop()
