"""Simulator logic without HTTP or a model: corpus picking, fill, validation, the facade and the schedule.

The searcher and the LLM here are small in-memory fakes (pure logic); the real retriever, the real
model and the real service are exercised in tests/integration/simulator.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.simulator.config import SimulatorSettings
from services.simulator.engine import (
    CorpusGenerator,
    LLMGenerator,
    SimJob,
    Simulator,
    SimulatorInputError,
    contains_answer,
    perturb_query,
)
from shared.llm import Generation, SamplingParams
from shared.noise_schedule import p_noise
from shared.schemas import Document, Hit, RetrieveRequest, RetrieveResponse, SearchMode, SimulateRequest

PASSAGES = [(f"p{i}", f"Title {i}", f"passage {i} is about topic {i % 3} and nothing else at all") for i in range(40)]
PASSAGES[2] = ("p2", "Lomonosov", "Moscow State University was founded in 1755 by Mikhail Lomonosov.")
PASSAGES[12] = ("p12", "MSU", "The university opened in 1755 in Moscow.")


class FakeSearcher:
    """Ranks the passages by a rotation depending on the query (deterministic)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int | None]] = []

    def retrieve(self, queries: list[str], topk: int | None = None, mode: SearchMode | None = None) -> list[list[Hit]]:
        self.calls.append((queries, topk))
        out = []
        for q in queries:
            shift = 0 if "Moscow" in q else 5
            ranked = PASSAGES[shift:] + PASSAGES[:shift]
            out.append([Hit(document=Document(id=pid, contents=f'"{title}"\n{text}'), score=1.0 - r / 100)
                        for r, (pid, title, text) in enumerate(ranked[: topk or 5])])
        return out


class FakeLLM:
    """Answers every conversation with the same canned text, recording what it was asked."""

    model_name = "fake"

    def __init__(self, replies: Sequence[str]):
        self.replies = list(replies)
        self.asked: list[SamplingParams] = []

    def chat(self, conversations: Sequence[list[dict[str, str]]], sampling: SamplingParams) -> list[str]:
        self.asked.append(sampling)
        reply = self.replies[min(len(self.asked) - 1, len(self.replies) - 1)]
        return [reply for _ in conversations]

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingParams) -> list[Generation]:
        raise NotImplementedError

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        return []

    def decode(self, token_ids: Sequence[int]) -> str:
        return ""

    def encode(self, text: str) -> list[int]:
        return []


def settings(**kw: object) -> SimulatorSettings:
    return SimulatorSettings(_env_file=None, **kw)  # type: ignore[call-arg]


def corpus_sim(**kw: object) -> tuple[Simulator, FakeSearcher]:
    s = settings(mode="corpus", retriever_url="http://unused", **kw)
    searcher = FakeSearcher()
    return Simulator(s, {"corpus": CorpusGenerator(searcher, s)}), searcher


def test_corpus_useful_promotes_passages_with_the_answer() -> None:
    sim, _ = corpus_sim()
    [res] = sim.run([SimJob("Moscow university", 3, "useful", "corpus", gold=["1755"])])
    assert len(res.docs) == 3 and res.filled == 0
    assert [d.id for d in res.docs[:2]] == ["p2", "p12"]  # p12 came from deep in the pool
    assert all(d.title and d.text for d in res.docs)


def test_corpus_noisy_is_same_topic_without_the_answer() -> None:
    sim, _ = corpus_sim()
    [res] = sim.run([SimJob("Moscow university", 4, "noisy", "corpus", gold=["1755"])])
    assert len(res.docs) == 4
    assert not any(contains_answer(d.text, ["1755"]) for d in res.docs)
    assert {d.id for d in res.docs}.isdisjoint({"p0", "p1", "p2", "p3"})  # not the top-k hits


def test_corpus_noisy_falls_back_to_a_perturbed_query() -> None:
    sim, searcher = corpus_sim(corpus_pool=1)
    [res] = sim.run([SimJob("Moscow university", 10, "noisy", "corpus", gold=["passage"])])  # everything matches
    assert len(res.docs) == 10
    assert res.docs[0].id == "p12"  # the one passage without "passage" outside the top k
    assert res.filled == 9 and all("No further results" in d.text for d in res.docs[1:])  # labelled filler
    assert len(searcher.calls) == 2 and searcher.calls[1][0] == [perturb_query("Moscow university")]


def test_perturb_query_drops_names_first() -> None:
    assert perturb_query("who founded Moscow State University in 1755") == "who founded in"
    assert perturb_query("what is the capital city") != "what is the capital city"


def test_llm_generator_regenerates_then_fills_and_reports() -> None:
    s = settings(words=10)
    llm = FakeLLM(["Doc 1 (Title: A) alpha beta gamma delta.", "Doc 1 (Title: B) beta gamma delta epsilon."])
    sim = Simulator(s, {"llm": LLMGenerator(llm, s)})
    [res] = sim.run([SimJob("q", 3, "useful", "llm")])
    assert [d.title for d in res.docs][:2] == ["A", "B"]
    assert len(res.docs) == 3 and res.filled == 1 and res.regenerated == 1
    assert llm.asked[0].stop == ["Doc 4"] and llm.asked[1].stop == ["Doc 3"]  # the retry asks for the missing 2
    assert len({d.id for d in res.docs}) == 3


def test_validation() -> None:
    sim, _ = corpus_sim(max_k=4, default_k=3)
    with pytest.raises(SimulatorInputError, match="between 1 and 4"):
        sim.job_for(SimulateRequest(query="q", k=5))
    with pytest.raises(SimulatorInputError, match="empty"):
        sim.job_for(SimulateRequest(query="   ", k=2))
    with pytest.raises(SimulatorInputError, match="not available"):
        sim.job_for(SimulateRequest(query="q", k=2, mode="llm"))
    with pytest.raises(ValueError):
        settings(mode="corpus")  # corpus mode without a retriever fails at start-up


def test_facade_draws_quality_from_p_noise_and_answers_in_retriever_format() -> None:
    sim, _ = corpus_sim()
    all_noisy = sim.facade_jobs(RetrieveRequest(queries=["a", "b", "c"], topk=2, p_noise=1.0))
    assert [j.quality for j in all_noisy] == ["noisy"] * 3 and all(j.k == 2 for j in all_noisy)
    assert {j.quality for j in sim.facade_jobs(RetrieveRequest(query="a", p_noise=0.0))} == {"useful"}
    draws = [j.quality for j in sim.facade_jobs(RetrieveRequest(queries=["q"] * 400, p_noise=0.3))]
    assert 0.2 < draws.count("noisy") / 400 < 0.4
    response = sim.retrieve(RetrieveRequest(queries=["Moscow x", "y"], topk=3))
    again = RetrieveResponse.model_validate_json(response.model_dump_json())
    assert [len(r) for r in again.result] == [3, 3]
    assert again.result[0][0].document.contents.startswith('"')


def test_schedule_follows_p_noise_and_the_trainer_moves_it() -> None:
    sim, _ = corpus_sim(total_steps=100)
    assert sim.schedule.current() == 0.0
    sim.schedule.set(50)
    assert sim.schedule.current() == pytest.approx(p_noise(50, 100))
    sim.schedule.set(10, total_steps=10)
    assert sim.schedule.current() == pytest.approx(0.5)
    draws = [j.quality for j in sim.facade_jobs(RetrieveRequest(queries=["q"] * 400))]
    assert 0.4 < draws.count("noisy") / 400 < 0.6
