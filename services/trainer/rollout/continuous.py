"""The agent loop with continuous batching and KV reuse across turns (the worker's default rollout).

    runner = ContinuousRunner(backend, SearchRegistry(...), slots=8)   # backend: a LocalBackend
    results = runner.run([EpisodeRequest(...), ...])                   # -> list[EpisodeResult], same order

The same transitions as :class:`~services.trainer.rollout.agent.AgentRunner` (:class:`EpisodeSteps`),
driven differently. ``AgentRunner`` decodes a turn of every episode as one batch that waits for its
longest row, then searches, and each turn prefills the whole conversation again. Here:

    every episode that wants a generation is submitted to one ContinuousEngine (shared.engine)
    loop until every episode is done:
        engine.step()                      one decode step for every generating row
        a generation ended -> after_generation; its row stops decoding, the others go on
        episodes that now want a search -> sent together (one call per backend) on a search thread
        searches that came back -> after_search -> the episode is submitted again: its row still
            holds prompt + history, so only the observation (and the last generated token) is prefilled
        no row generating -> wait for the next search to come back

Episodes beyond ``slots`` wait and take a row as one ends. With ``more`` (the worker: a non-blocking read
of the episode queue) rows that fall free are refilled from outside while the others decode, and with
``emit`` each episode's result goes out as soon as it ends, so a batch never waits for its slowest row
to start new work. Results, token records, masks and
log-probs are those of ``AgentRunner`` (log-probs: the model's own at temperature 1, exact to one
forward pass of the whole sequence). A backend without an engine (remote servers) runs per turn.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from services.trainer.rollout.agent import AgentRunner
from services.trainer.rollout.search import SearchOutcome, SearchRegistry
from services.trainer.rollout.trajectory import AgentState, Trajectory
from shared.client import JudgeClient
from shared.llm import LLMBackend
from shared.schemas import EpisodeRequest, EpisodeResult

log = logging.getLogger(__name__)

SEARCH_THREADS = 4  # search batches in flight at once (each batch is itself concurrent in the client)
REFILL_EVERY_S = 0.05  # how often ``more`` is asked again after it had nothing (a decode step is ~20-60 ms)

More = Callable[[int], Sequence[EpisodeRequest]]  # free rows -> up to that many new episodes (none: nothing now)
Emit = Callable[[list[int], list[EpisodeResult]], None]  # episode indices (in run order) -> their results


class ContinuousRunner(AgentRunner):
    """``AgentRunner``'s episodes, decoded as a continuous batch with each episode's KV kept between turns."""

    def __init__(self, backend: LLMBackend, search: SearchRegistry, judge: JudgeClient | None = None,
                 worker: str = "", policy_version: int = 0, slots: int = 8):
        super().__init__(backend, search, judge, worker, policy_version)
        self.slots = slots
        self.stats: dict[str, int] = {}  # the last run's engine counters (decode steps, prefilled / reused tokens)

    def run(self, requests: Sequence[EpisodeRequest], more: More | None = None,
            emit: Emit | None = None) -> list[EpisodeResult]:
        """Run ``requests`` (and what ``more`` adds) to completion; every result, in run order.

        ``more(free)`` is asked for new episodes whenever fewer than ``slots`` are unfinished; they are
        numbered after the ones before them. ``emit(indices, results)`` gets the episodes that ended in a
        step (one judge call for them), as they end."""
        make_engine = getattr(self.backend, "engine", None)
        if make_engine is None:
            ran = super().run(requests)
            if emit is not None:
                emit(list(range(len(ran))), ran)
            return ran
        trajs = [self.start(r) for r in requests]
        engine = make_engine(self.slots if more is not None else min(self.slots, max(1, len(trajs))))
        limits: dict[int, int] = {}  # episode -> its token limit for the generation in flight
        searching: dict[Future[list[SearchOutcome]], list[int]] = {}
        sent: set[int] = set()  # episodes whose search is in flight
        results: dict[int, EpisodeResult] = {}
        asked_at = float("-inf")  # when ``more`` last had nothing
        with ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="search") as pool:
            while True:
                unfinished = sum(t.state is not AgentState.DONE for t in trajs)
                if more is not None and unfinished < self.slots and time.monotonic() - asked_at > REFILL_EVERY_S:
                    added = [self.start(r) for r in more(self.slots - unfinished)]
                    trajs += added
                    unfinished += len(added)
                    asked_at = float("-inf") if added else time.monotonic()
                if not unfinished:
                    break
                for i, t in enumerate(trajs):
                    if t.state is AgentState.GENERATE and i not in limits:
                        params, limits[i] = self.sampling(t)
                        engine.submit(i, t.prompt_ids + t.response_ids, params)
                self._send_searches(trajs, sent, searching, pool)
                if engine.busy():
                    for key, gen in engine.step():
                        assert isinstance(key, int)
                        t = trajs[key]
                        self.after_generation(t, gen, limits.pop(key))
                        if t.state is AgentState.DONE:
                            engine.release(key)
                    done = [f for f in searching if f.done()]
                elif searching:
                    done = list(wait(searching, return_when=FIRST_COMPLETED).done)
                else:
                    done = []
                for future in done:
                    group = searching.pop(future)
                    for i, outcome in zip(group, self._outcomes(future, len(group)), strict=True):
                        sent.discard(i)
                        self.after_search(trajs[i], outcome)
                        if trajs[i].state is AgentState.DONE:
                            engine.release(i)
                if emit is not None:
                    self._emit(trajs, results, emit)
        self.stats = {"decode_steps": engine.steps, "prefilled_tokens": engine.prefilled, "reused_tokens": engine.reused,
                      "episodes": len(trajs)}
        if emit is None:
            return self._results(trajs)
        return [results[i] for i in range(len(trajs))]

    def _emit(self, trajs: list[Trajectory], results: dict[int, EpisodeResult], emit: Emit) -> None:
        """The episodes that ended since the last call: their results (judged together), out through ``emit``."""
        ended = [i for i, t in enumerate(trajs) if t.state is AgentState.DONE and i not in results]
        if ended:
            for i, result in zip(ended, self._results([trajs[i] for i in ended]), strict=True):
                results[i] = result
            emit(ended, [results[i] for i in ended])

    def _send_searches(self, trajs: list[Trajectory], sent: set[int],
                       searching: dict[Future[list[SearchOutcome]], list[int]], pool: ThreadPoolExecutor) -> None:
        """The episodes that now want a search, sent together: one request batch per search backend."""
        by_backend: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(trajs):
            if t.state is AgentState.SEARCH and i not in sent:
                by_backend[t.request.search_backend].append(i)
        for name, group in by_backend.items():
            queries = [self.search_query(trajs[i]) for i in group]
            try:
                backend = self.search.get(name)
            except ValueError as exc:  # backend unknown or not configured on this worker
                future: Future[list[SearchOutcome]] = Future()
                future.set_result([SearchOutcome(error=str(exc)) for _ in group])
            else:
                future = pool.submit(backend.search, queries)
            searching[future] = group
            sent.update(group)

    @staticmethod
    def _outcomes(future: Future[list[SearchOutcome]], n: int) -> list[SearchOutcome]:
        """A search batch's outcomes; one that raised (the client already retried) fails each of its episodes."""
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 -- a tool failure becomes an observation, never a crash
            log.warning("search batch of %d failed: %s", n, exc)
            return [SearchOutcome(error=f"{type(exc).__name__}: {exc}") for _ in range(n)]
