"""(d) The agent loop with the real embedded policy and a real retriever: the loss mask is 0 exactly on
the ``<information>`` observation tokens, and the recorded log-probs are the policy's own. Every test runs
on both rollouts: per-turn batches (``AgentRunner``) and continuous batching with KV reuse
(``ContinuousRunner``), which must also give the same episodes greedily."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from services.trainer.rollout.agent import AgentRunner
from services.trainer.rollout.continuous import ContinuousRunner
from services.trainer.rollout.search import SearchEndpoints, SearchRegistry
from shared.config import LLMSettings
from shared.data import load_split
from shared.llm import LocalBackend
from shared.processes import Proc
from shared.schemas import EpisodeRequest, EpisodeResult, EpisodeSampling

pytestmark = pytest.mark.slow

# environment text: observation blocks, and after the final nudge the answer block it opens
OBSERVATIONS = re.compile(r"(\s*<information>.*?</information>\s*)+(<answer>)?", re.S)


def runs(mask: list[int]) -> Iterator[tuple[int, int, int]]:
    """(value, start, end) of each maximal run of equal mask values."""
    start = 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            yield mask[start], start, i
            start = i


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalBackend]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core box, one thread per process avoids oversubscription
    yield LocalBackend(LLMSettings(model="smollm2", dtype="float32"))  # exact log-prob checks
    torch.set_num_threads(threads)


def make_runner(kind: str, backend: LocalBackend, search: SearchRegistry) -> AgentRunner:
    if kind == "continuous":
        return ContinuousRunner(backend, search, worker="test", slots=3)  # 4 episodes: one waits for a row
    return AgentRunner(backend, search, worker="test")


@pytest.fixture(scope="module", params=["per_turn", "continuous"])
def results(request: pytest.FixtureRequest, backend: LocalBackend, small_retriever: Proc) -> list[EpisodeResult]:
    rows = load_split("hotpotqa", "all", 4)
    search = SearchRegistry(SearchEndpoints(retriever_url=small_retriever.url))
    reqs = [EpisodeRequest(job_id="mask", episode_id=str(i), question=r["question"], ground_truth=r["answers"],
                           sampling=EpisodeSampling(max_new_tokens=16, temperature=1.0, seed=i), max_turns=1,
                           topk=2, obs_max_tokens=64, max_total_tokens=300)
            for i, r in enumerate(rows[:3])]
    rag = EpisodeRequest(job_id="mask", episode_id="rag", method="rag", question=rows[3]["question"],
                         ground_truth=rows[3]["answers"], sampling=EpisodeSampling(max_new_tokens=8), topk=2)
    try:
        return make_runner(request.param, backend, search).run([*reqs, rag])
    finally:
        search.close()


def test_loss_mask_is_zero_exactly_on_information_blocks(backend: LocalBackend, results: list[EpisodeResult]) -> None:
    blocks = 0
    for r in results:
        assert len(r.response_ids) == len(r.loss_mask) == len(r.logprobs) <= 400
        assert set(r.loss_mask) <= {0, 1}
        for value, a, b in runs(r.loss_mask):
            text = backend.decode(r.response_ids[a:b])
            if value == 0:
                assert OBSERVATIONS.fullmatch(text), text
                blocks += text.count("<information>")
                assert all(lp == 0.0 for lp in r.logprobs[a:b])
            else:
                assert "<information>" not in text and "</information>" not in text
                assert all(lp <= 0.0 for lp in r.logprobs[a:b])
        assert r.text.count("<information>") == sum(
            backend.decode(r.response_ids[a:b]).count("<information>") for v, a, b in runs(r.loss_mask) if v == 0)
    assert blocks >= 1  # at least the invalid-action hints and final nudges of an untrained model


def test_real_retrieval_reaches_the_policy(backend: LocalBackend, results: list[EpisodeResult]) -> None:
    rag = next(r for r in results if r.episode_id == "rag")
    assert rag.searches == 1 and rag.search_failures == 0
    assert "Doc 1(Title:" in backend.decode(rag.prompt_ids) and "Doc 2(Title:" in backend.decode(rag.prompt_ids)
    for r in results:  # an agent that searched got documents back, not an error
        if r.episode_id != "rag" and r.searches:
            assert r.search_failures == 0 and "Doc 1(Title:" in r.text


def test_recorded_logprobs_are_the_policys_own(backend: LocalBackend, results: list[EpisodeResult]) -> None:
    r = max(results, key=lambda r: sum(r.loss_mask))
    teacher = backend.sequence_logprobs(r.prompt_ids, r.response_ids)
    own = [(got, want) for got, want, m in zip(r.logprobs, teacher, r.loss_mask, strict=True) if m == 1]
    assert own
    assert max(abs(got - want) for got, want in own) < 0.05


def test_continuous_rollout_gives_the_per_turn_episodes_and_reuses_the_cache(backend: LocalBackend,
                                                                              small_retriever: Proc) -> None:
    """Greedy, two turns with real searches: the same token records either way; the continuous runner's log-probs
    match a full forward pass of each episode to 1e-3, and its second turns prefilled the observations only."""
    rows = load_split("hotpotqa", "all", 3)
    reqs = [EpisodeRequest(job_id="same", episode_id=str(i), question=r["question"], ground_truth=r["answers"],
                           sampling=EpisodeSampling(max_new_tokens=24, temperature=0.0), max_turns=2, topk=2, obs_max_tokens=48,
                           max_total_tokens=300) for i, r in enumerate(rows)]
    search = SearchRegistry(SearchEndpoints(retriever_url=small_retriever.url))
    try:
        per_turn = make_runner("per_turn", backend, search).run(reqs)
        runner = ContinuousRunner(backend, search, worker="test", slots=3)
        continuous = runner.run(reqs)
    finally:
        search.close()
    for a, b in zip(per_turn, continuous, strict=True):
        assert (a.response_ids, a.loss_mask, a.turns, a.answer) == (b.response_ids, b.loss_mask, b.turns, b.answer)
        teacher = backend.sequence_logprobs(b.prompt_ids, b.response_ids)
        own = [(got, want) for got, want, m in zip(b.logprobs, teacher, b.loss_mask, strict=True) if m == 1]
        assert max(abs(got - want) for got, want in own) < 1e-3
    assert max(r.turns for r in continuous) >= 2
    history = sum(len(r.prompt_ids) + len(r.response_ids) for r in continuous)
    assert runner.stats["reused_tokens"] > 0
    assert runner.stats["prefilled_tokens"] < history  # per turn, every turn prefills its whole history again


def test_rows_that_end_are_refilled_and_each_result_goes_out_as_its_episode_ends(backend: LocalBackend,
                                                                                  small_retriever: Proc) -> None:
    """A continuous run of 2 rows fed 5 episodes through ``more``: never more than 2 unfinished at once,
    every episode's result emitted once, the first ones before the last ones started, and the same episodes
    as one run of all five gives (greedy)."""
    rows = load_split("hotpotqa", "all", 5)
    reqs = [EpisodeRequest(job_id="refill", episode_id=str(i), question=r["question"], ground_truth=r["answers"],
                           sampling=EpisodeSampling(max_new_tokens=12, temperature=0.0), max_turns=1, topk=2,
                           obs_max_tokens=32, max_total_tokens=200) for i, r in enumerate(rows)]
    source = list(reqs[2:])
    asked: list[int] = []  # the free rows each call of ``more`` offered
    events: list[tuple[str, str]] = []

    def more(free: int) -> list[EpisodeRequest]:
        asked.append(free)
        new, source[:] = source[:1], source[1:]  # one at a time: joins happen mid-run
        events.extend(("start", r.episode_id) for r in new)
        return new

    def emit(indices: list[int], results: list[EpisodeResult]) -> None:
        events.extend(("done", r.episode_id) for r in results)

    search = SearchRegistry(SearchEndpoints(retriever_url=small_retriever.url))
    try:
        runner = ContinuousRunner(backend, search, worker="test", slots=2)
        streamed = runner.run(reqs[:2], more=more, emit=emit)
        alone = ContinuousRunner(backend, search, worker="test", slots=2).run(reqs)
    finally:
        search.close()
    assert [r.episode_id for r in streamed] == [r.episode_id for r in reqs]
    done = [e for kind, e in events if kind == "done"]
    assert sorted(done) == sorted(r.episode_id for r in reqs) and len(done) == 5
    assert events.index(("done", done[0])) < events.index(("start", "4"))  # a result went out mid-run
    assert max(asked) <= 2 and all(a >= 1 for a in asked)
    assert runner.stats["episodes"] == 5
    # batch-mates join at other steps than in one run of all five, so a float32 near-tie may flip a later token
    same = sum((a.response_ids, a.answer) == (b.response_ids, b.answer) for a, b in zip(alone, streamed, strict=True))
    assert same >= 4
