"""The answer rule with the real embedded model and a real retriever: on questions where SmolLM2 closes the
pre-filled ``<answer>`` at once (an empty answer, scored 0), ``min_answer_tokens=1`` makes the baseline say what
it would answer; an answer that had content before any tag starts the same (greedy), and the harness reports
the answered rate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.trainer.eval.harness import summarize
from services.trainer.rollout.agent import AgentRunner
from services.trainer.rollout.search import SearchEndpoints, SearchRegistry
from shared.config import LLMSettings
from shared.data import load_questions
from shared.llm import LocalBackend, SamplingParams
from shared.processes import Proc
from shared.schemas import EpisodeRequest, EpisodeResult, EpisodeSampling

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalBackend]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box: one thread per process
    yield LocalBackend(LLMSettings(model="smollm2"))
    torch.set_num_threads(threads)


def run(backend: LocalBackend, retriever: Proc, method: str, min_answer_tokens: int) -> list[EpisodeResult]:
    rows = load_questions("2wikimultihopqa", "eval", 24)
    search = SearchRegistry(SearchEndpoints(retriever_url=retriever.url))
    sampling = EpisodeSampling(max_new_tokens=16, temperature=0.0, min_answer_tokens=min_answer_tokens)
    reqs = [EpisodeRequest(job_id="rule", episode_id=f"2wiki:{r['id']}", method=method, question=r["question"],
                           ground_truth=r["answers"], sampling=sampling, topk=3, obs_max_tokens=256)
            for r in rows]
    try:
        return AgentRunner(backend, search).run(reqs)
    finally:
        search.close()


@pytest.mark.parametrize("engine", ["continuous", "batch"])
def test_min_content_tokens_holds_back_eos_and_tags_until_there_is_content(backend: LocalBackend, engine: str) -> None:
    prompt = backend.apply_chat_template([{"role": "user", "content": "Say nothing at all."}]) + backend.encode("<answer>")
    backend.settings.engine = engine  # type: ignore[assignment]
    try:
        gen = backend.generate([prompt], SamplingParams(max_new_tokens=12, stop=["</answer>"], min_content_tokens=2))[0]
    finally:
        backend.settings.engine = "continuous"
    pieces = [backend.tokenizer.decode([t]) for t in gen.token_ids]
    end = next((k for k, (t, p) in enumerate(zip(gen.token_ids, pieces, strict=True))
                if t in backend.eos_ids or "<" in p), len(pieces))
    assert sum(bool(p.strip()) for p in pieces[:end]) >= 2 or end == len(pieces) == 12, pieces


@pytest.mark.parametrize("method", ["rag", "direct"])
def test_baseline_answers_where_it_was_empty(backend: LocalBackend, small_retriever: Proc, method: str) -> None:
    before = run(backend, small_retriever, method, min_answer_tokens=0)
    after = run(backend, small_retriever, method, min_answer_tokens=1)
    empty = [b.episode_id for b in before if b.answer is None]
    if method == "rag":
        assert len(empty) >= 2, "the premise: SmolLM2's rag closes <answer> at once on some of these questions"
    assert all(a.answer for a in after), [a.episode_id for a in after if not a.answer]
    # Where it had content before any tag nothing was held back: the same first token (greedy; the first step's
    # batch is the same in both runs). Later tokens may differ where an empty row now decodes on beside it (its
    # batch-mates change, and float32 near-ties can flip), so the answers agree for most, not necessarily all.
    had_content = [(b, a) for b, a in zip(before, after, strict=True) if b.text.split("<", 1)[0].strip()]
    assert len(had_content) >= 4
    for b, a in had_content:
        assert a.response_ids[0] == b.response_ids[0], a.episode_id
    same = sum(a.answer == b.answer for b, a in had_content)
    assert same >= 0.75 * len(had_content), [(b.answer, a.answer) for b, a in had_content if a.answer != b.answer]
    assert summarize(after)["answered"] == 1.0
    assert summarize(before)["answered"] == pytest.approx(1 - len(empty) / len(before))
