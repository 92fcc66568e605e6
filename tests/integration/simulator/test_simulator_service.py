"""The simulator service for real on loopback: llm mode on the embedded SmolLM2 (behind a real
OpenAI-compatible server), corpus mode over a real retriever service; shapes, k, the facade, errors."""

from __future__ import annotations

import httpx
import pytest

from shared.client import RetrieverClient, ServiceCallError, SimulatorClient
from shared.processes import Proc
from shared.schemas import RetrieveResponse, ScheduleState, SimulateResponse

QUESTION = "In what year was the university where Sergei Aleksandrovich Tokarev was a professor founded?"
GOLD = ["1755"]


def _check_documents(response: SimulateResponse, k: int) -> None:
    assert len(response.documents) == k
    for doc in response.documents:
        assert doc.title.strip() and len(doc.text.split()) >= 3


# --------------------------------------------------------------------------- corpus mode


def test_corpus_simulate_useful_and_noisy(corpus_simulator: Proc) -> None:
    client = SimulatorClient(corpus_simulator.url)
    useful = client.simulate({"query": "Sergei Aleksandrovich Tokarev professor university", "question": QUESTION,
                              "gold": ["Moscow State University"], "k": 4, "quality": "useful"})
    _check_documents(useful, 4)
    assert useful.quality == "useful" and useful.mode == "corpus"
    text = " ".join(d.text for d in useful.documents)
    assert "Moscow State University" in text  # a real passage holding the answer, promoted to the top k

    noisy = client.simulate({"query": "Sergei Aleksandrovich Tokarev professor university", "question": QUESTION,
                             "gold": ["Moscow State University"], "k": 6, "quality": "noisy"})
    _check_documents(noisy, 6)
    assert noisy.quality == "noisy"
    assert "moscow state university" not in " ".join(d.text for d in noisy.documents).lower()


def test_corpus_facade_parses_like_the_retriever(corpus_simulator: Proc, small_retriever: Proc) -> None:
    body = {"queries": ["Florida Senate members", "Tokarev ethnographer"], "topk": 3, "return_scores": True}
    sim_raw = httpx.post(corpus_simulator.url + "/retrieve", json={**body, "p_noise": 0.0}, timeout=60).json()
    real_raw = httpx.post(small_retriever.url + "/retrieve", json=body, timeout=60).json()
    assert set(sim_raw) == set(real_raw) == {"result"}
    sim, real = RetrieveResponse.model_validate(sim_raw), RetrieveResponse.model_validate(real_raw)
    assert [len(r) for r in sim.result] == [len(r) for r in real.result] == [3, 3]
    for sim_hit, real_hit in zip(sim_raw["result"][0], real_raw["result"][0], strict=True):
        assert set(sim_hit) == set(real_hit) and set(sim_hit["document"]) == set(real_hit["document"])
    # p_noise 0 -> useful: the real top hits, same passages in the same order
    assert [h.document.id for h in sim.result[1]] == [h.document.id for h in real.result[1]]
    # SkyRL's single query, through the same client the agents use
    [hits] = RetrieverClient(corpus_simulator.url).retrieve(["Florida Senate"], topk=2)
    assert len(hits) == 2 and hits[0].document.contents.startswith('"')


def test_schedule_moves_the_facade_noise(corpus_simulator: Proc) -> None:
    state = ScheduleState.model_validate(httpx.get(corpus_simulator.url + "/schedule").json())
    assert state.total_steps == 100 and state.end == 0.5
    moved = httpx.post(corpus_simulator.url + "/schedule", json={"step": 50}).json()
    assert moved["p_noise"] == pytest.approx(1 / 6)
    moved = httpx.post(corpus_simulator.url + "/schedule", json={"step": 100, "total_steps": 100}).json()
    assert moved["p_noise"] == pytest.approx(0.5)
    info = httpx.get(corpus_simulator.url + "/info").json()["details"]
    assert info["mode"] == "corpus" and info["schedule"]["step"] == 100 and info["modes"] == ["corpus"]


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"query": "", "k": 3}, 422, "invalid_request"),
    ({"query": "   ", "k": 3}, 422, "invalid_request"),
    ({"query": "q", "k": 0}, 422, "invalid_request"),
    ({"query": "q", "k": 9}, 422, "invalid_request"),  # above SIMULATOR_MAX_K=8
    ({"query": "q", "quality": "great"}, 422, "invalid_request"),
    ({"query": "q", "mode": "oracle"}, 422, "invalid_request"),
    ({"query": "q", "mode": "llm"}, 422, "invalid_request"),  # no LLM on this simulator
    ({"k": 3}, 422, "invalid_request"),
    ({"query": "x" * 5000}, 422, "invalid_request"),  # longer than max_query_chars
])
def test_bad_input_is_4xx(corpus_simulator: Proc, body: dict[str, object], status: int, code: str) -> None:
    r = httpx.post(corpus_simulator.url + "/simulate", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_bad_facade_and_schedule_input_is_4xx(corpus_simulator: Proc) -> None:
    url = corpus_simulator.url
    assert httpx.post(url + "/retrieve", json={"queries": ["q"], "topk": 50}).status_code == 422
    assert httpx.post(url + "/retrieve", json={"queries": ["q"], "p_noise": 1.5}).status_code == 422
    assert httpx.post(url + "/retrieve", json={"queries": [" "]}).status_code == 422
    assert httpx.post(url + "/retrieve", content=b"{not json", headers={"content-type": "application/json"}
                      ).status_code == 400
    assert httpx.post(url + "/schedule", json={"step": -1}).status_code == 422
    with pytest.raises(ServiceCallError) as err:
        SimulatorClient(url, max_retries=0).simulate({"query": "q", "k": 20})  # under the schema cap (50), over max_k
    assert err.value.status == 422 and "between 1 and 8" in err.value.message


def test_ops_routes(corpus_simulator: Proc) -> None:
    assert httpx.get(corpus_simulator.url + "/health").json() == {"status": "ok"}
    assert httpx.get(corpus_simulator.url + "/ready").status_code == 200
    metrics = httpx.get(corpus_simulator.url + "/metrics").text
    assert 'route="/simulate"' in metrics
    assert 'searchlab_simulator_document_sets_total{mode="corpus",quality="noisy"}' in metrics


# --------------------------------------------------------------------------- llm mode


@pytest.mark.slow
def test_llm_simulate_honours_k(llm_simulator: Proc) -> None:
    client = SimulatorClient(llm_simulator.url, timeout_s=900)
    useful = client.simulate({"query": "Tokarev professor university founded", "question": QUESTION, "gold": GOLD,
                              "k": 3, "quality": "useful"})
    _check_documents(useful, 3)
    assert useful.mode == "llm" and 0 <= useful.filled <= 3
    noisy = client.simulate({"query": "Tokarev professor university founded", "k": 2, "quality": "noisy"})
    _check_documents(noisy, 2)
    assert noisy.quality == "noisy"


@pytest.mark.slow
def test_llm_facade_parses_like_the_retriever(llm_simulator: Proc) -> None:
    raw = httpx.post(llm_simulator.url + "/retrieve",
                     json={"queries": ["Florida Senate members", "Ken Pruitt"], "topk": 2, "return_scores": True,
                           "p_noise": 0.5}, timeout=900).json()
    assert set(raw) == {"result"}
    parsed = RetrieveResponse.model_validate(raw)
    assert [len(r) for r in parsed.result] == [2, 2]
    for row in parsed.result:
        for hit in row:
            title, newline, text = hit.document.contents.partition("\n")
            assert newline and title.startswith('"') and title.endswith('"') and text.strip()
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)
    info = httpx.get(llm_simulator.url + "/info").json()["details"]
    assert info["mode"] == "llm" and sum(info["served"][q] for q in ("useful", "noisy")) >= 2
