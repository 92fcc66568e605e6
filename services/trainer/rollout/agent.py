"""The agent loop: one explicit state machine per trajectory, batched across trajectories per turn.

    runner = AgentRunner(backend, SearchRegistry(SearchEndpoints(retriever_url=...)))
    results = runner.run([EpisodeRequest(...), ...])  # -> list[EpisodeResult], same order

Methods (``EpisodeRequest.method``; all end in an :class:`EpisodeResult` with scores and a reward):

- ``agent``  the multi-turn search agent (DESIGN.md §4): prompt from a ``shared.protocol`` template ->
             generate until ``</search>`` or ``</answer>`` -> search -> append the observation
             (``<information>`` with the top-k documents, truncated to ``obs_max_tokens``) -> ... ->
             answer, or after ``max_turns`` turns one final turn with a nudge to answer, the answer block already
             opened by the environment (masked like an observation).
- ``direct`` answer without search: one generation, the assistant turn pre-filled with ``<answer>``.
- ``rag``    RAG-PE: retrieve once with the question, answer from the top-k documents (pre-filled too).
- ``noop``   returns an empty result at once (measures the queue's own overhead).

The answer turn (``EpisodeSampling.min_answer_tokens``, the same rule for every method; eval sets it, RL
leaves it 0): when the environment has opened the answer block (direct / rag, an agent's forced final
turn), EOS and tag tokens are held back until that turn has ``min_answer_tokens`` non-blank tokens
(:attr:`shared.llm.SamplingParams.min_content_tokens`), so a model that would close ``<answer>`` at once
still says what it would answer, and an answer that had content anyway is unchanged. An agent that closes
an empty answer block itself gets the answer block opened once more, under the same rule.

Per-turn batching: every trajectory waiting to generate is decoded in one ``backend.generate`` call
(grouped by sampling settings); then every pending search of the turn runs concurrently.

The transitions live in :class:`EpisodeSteps` (tokenization only, no generation and no waiting), so the
same state machine also runs one episode at a time as a coroutine with remote generation
(:mod:`services.trainer.rollout.async_agent`: the worker's remote lane and searchlab's verl agent loop).

Tokens: ``prompt_ids`` come from the chat template; the response is the policy's generated ids
(loss mask 1, its own log-probs) interleaved with observation ids (loss mask 0, log-prob 0.0). An
observation is tokenized on its own and appended, so the mask boundary is exact. Every environment
text (documents, a failed search, an invalid action, the final nudge) is an observation block, so the
loss mask is 0 exactly on the observation blocks. A failed search becomes an observation and a count
in ``search_failures``, never an exception.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

from services.trainer.rollout.search import SearchOutcome, SearchQuery, SearchRegistry
from services.trainer.rollout.trajectory import (
    ANSWER_PREFILL,
    BASELINE_PROMPTS,
    FINAL_NUDGE,
    INVALID_ACTION,
    MIN_TURN_TOKENS,
    NO_DOCUMENTS,
    SCORE_METRICS,
    SEARCH_FAILED,
    AgentState,
    Trajectory,
)
from shared.client import JudgeClient, ServiceCallError
from shared.llm import Generation, LLMBackend, Messages, SamplingParams
from shared.metrics import METRICS, best_match
from shared.protocol import extract_answer, format_documents, get_template, last_action
from shared.rewards import RewardConfig, compute_reward
from shared.schemas import EpisodeRequest, EpisodeResult

__all__ = ["ANSWER_PREFILL", "FINAL_NUDGE", "INVALID_ACTION", "AgentRunner", "AgentState", "EpisodeSteps",
           "Tokenizing", "Trajectory"]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the transitions


class Tokenizing(Protocol):
    """What the transitions need of a model: its tokenizer (an :class:`~shared.llm.LLMBackend` is one)."""

    def apply_chat_template(self, messages: Messages, add_generation_prompt: bool = True) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def encode(self, text: str) -> list[int]: ...


class EpisodeSteps:
    """The agent's transitions on one trajectory: start it, take a generation, take a search outcome,
    score it. Nothing here generates or waits, so a batched runner and a coroutine per episode share it."""

    def __init__(self, tokens: Tokenizing, worker: str = "", policy_version: int = 0):
        self.tokens = tokens
        self.worker = worker
        self.policy_version = policy_version

    # -- start ----------------------------------------------------------------------------
    def start(self, req: EpisodeRequest) -> Trajectory:
        try:
            t = Trajectory(req, get_template(req.template))
        except ValueError as exc:  # a bad request is answered, not retried
            t = Trajectory(req, get_template("search_r1"))
            t.error = str(exc)
            t.finish("error")
            return t
        if req.method == "noop":
            t.finish("noop")
        elif req.method == "direct":
            self._set_baseline_prompt(t, BASELINE_PROMPTS["direct"].format(question=req.question.strip()))
        elif req.method == "rag":
            t.pending_query = req.question
            t.state = AgentState.SEARCH
        elif req.prompt_ids:
            t.prompt_ids = list(req.prompt_ids)
        else:
            messages = req.messages or t.template.build_messages(req.question)
            t.prompt_ids = self.tokens.apply_chat_template(messages)
        return t

    def _set_baseline_prompt(self, t: Trajectory, user: str) -> None:
        t.prompt_ids = self.tokens.apply_chat_template([{"role": "user", "content": user}])
        t.prompt_ids += self.tokens.encode(ANSWER_PREFILL)
        t.prefill = ANSWER_PREFILL
        t.final_turn = True

    # -- generation -------------------------------------------------------------------------
    def stops(self, t: Trajectory) -> tuple[str, ...]:
        answer_stop = f"</{t.template.answer_tag}>"
        if t.final_turn:
            return (answer_stop,)
        return (*t.template.stop, self._fake_observation(t))

    def sampling(self, t: Trajectory) -> tuple[SamplingParams, int]:
        """The next turn's sampling settings and this episode's token limit for it."""
        s = t.request.sampling
        limit = min(s.max_new_tokens, t.remaining)
        seed = None if s.seed is None else s.seed + t.turns
        return SamplingParams(max_new_tokens=limit, temperature=s.temperature, top_p=s.top_p,
                              stop=list(self.stops(t)), seed=seed, min_content_tokens=self.answer_minimum(t)), limit

    @staticmethod
    def answer_minimum(t: Trajectory) -> int:
        """The answer-turn minimum (``sampling.min_answer_tokens``) when the environment opened the answer
        block for this turn, else 0."""
        return t.request.sampling.min_answer_tokens if t.final_turn and (t.prefill or t.forced_answer) else 0

    @staticmethod
    def _fake_observation(t: Trajectory) -> str:
        """The observation's opening tag: only the environment writes it; a policy that does is cut there."""
        return f"<{t.template.observation_tag}>"

    def _cut(self, gen: Generation, n: int, reason: str) -> Generation:
        return Generation(gen.token_ids[:n], gen.logprobs[:n], self.tokens.decode(gen.token_ids[:n]), reason)

    def _tokens_to(self, gen: Generation, chars: int, shortest: bool) -> int:
        """The fewest tokens whose text reaches ``chars`` characters (``shortest=False``: the most that stay
        below it)."""
        n = 0
        while n < len(gen.token_ids) and len(self.tokens.decode(gen.token_ids[:n + 1])) < chars:
            n += 1
        return min(n + 1, len(gen.token_ids)) if shortest else n

    def _cut_at_stop(self, t: Trajectory, gen: Generation) -> Generation:
        """A server that ignored the stop strings (SGLang without its tokenizer): keep the tokens up to the
        first stop, as a server that honours them would have returned."""
        if len(gen.token_ids) < 2:
            return gen
        head = self.tokens.decode(gen.token_ids[:-1])
        hits = [head.find(s) + len(s) for s in self.stops(t) if s in head]
        if not hits:
            return gen
        return self._cut(gen, self._tokens_to(gen, min(hits), shortest=True), "stop")

    def _drop_fake_observation(self, t: Trajectory, gen: Generation) -> Generation:
        """Remove the tokens of an observation tag the policy started writing itself (and what follows)."""
        at = gen.text.find(self._fake_observation(t))
        if at < 0:
            return gen
        return self._cut(gen, self._tokens_to(gen, at + 1, shortest=False), "stop")

    def after_generation(self, t: Trajectory, gen: Generation, limit: int) -> None:
        if len(gen.token_ids) > limit:  # the batch ran longer than this episode's own budget
            gen = self._cut(gen, limit, "length")
        gen = self._cut_at_stop(t, gen)
        if not t.final_turn and t.method == "agent":
            gen = self._drop_fake_observation(t, gen)
        t.add_policy(gen, gen.text)
        t.turns += 1
        if t.method in ("direct", "rag"):
            t.finish("answer" if gen.finish_reason == "stop" else "token_limit")
            return
        action = last_action(gen.text, t.template)
        if action is not None and action.kind == "answer" and self._retry_empty_answer(t):
            return
        if action is not None and action.kind == "answer":
            t.finish("answer")
        elif t.final_turn:
            t.finish("turn_limit")
        elif t.remaining < MIN_TURN_TOKENS:
            t.finish("token_limit")
        elif action is not None and action.kind == "search" and action.content:
            t.pending_query = action.content
            t.state = AgentState.SEARCH
        else:
            t.invalid_actions += 1
            self._observe(t, INVALID_ACTION)

    def _retry_empty_answer(self, t: Trajectory) -> bool:
        """An agent closed an empty answer block on its own: open it once more, under the answer-turn rule
        (only with ``min_answer_tokens`` set, once, and while the budget holds a turn)."""
        if (not t.request.sampling.min_answer_tokens or t.forced_answer or t.remaining < MIN_TURN_TOKENS
                or self.answer(t) is not None):
            return False
        t.final_turn = True
        self._force_answer(t)
        return True

    # -- search ----------------------------------------------------------------------------
    def search_query(self, t: Trajectory) -> SearchQuery:
        req = t.request
        return SearchQuery(t.pending_query or "", req.topk, req.p_noise, req.question, req.ground_truth)

    def after_search(self, t: Trajectory, outcome: SearchOutcome) -> None:
        t.pending_query = None
        t.searches += 1
        if outcome.error is not None:
            t.search_failures += 1
        if t.method == "rag":
            docs = self._truncate(format_documents(outcome.documents), t.request.obs_max_tokens)
            if outcome.error is not None:
                docs = SEARCH_FAILED.format(error=outcome.error)
            prompt = BASELINE_PROMPTS["rag"].format(documents=docs or NO_DOCUMENTS, question=t.request.question.strip())
            self._set_baseline_prompt(t, prompt)
            t.state = AgentState.GENERATE
            return
        if outcome.error is not None:
            self._observe(t, SEARCH_FAILED.format(error=outcome.error))
        elif not outcome.documents:
            self._observe(t, NO_DOCUMENTS)
        else:
            self._observe(t, format_documents(outcome.documents))

    # -- observations ------------------------------------------------------------------------
    def _truncate(self, text: str, max_tokens: int) -> str:
        ids = self.tokens.encode(text)
        return text if len(ids) <= max_tokens else self.tokens.decode(ids[:max_tokens])

    def _observe(self, t: Trajectory, body: str) -> None:
        """Append one observation block (body truncated to the budget), then continue or end the episode."""
        if t.state is AgentState.DONE:
            return
        wrapper = len(self.tokens.encode(t.template.format_observation("")))
        budget = min(t.request.obs_max_tokens, t.remaining - wrapper - MIN_TURN_TOKENS)
        if budget <= 0:
            t.finish("token_limit")
            return
        text = t.template.format_observation(self._truncate(body, budget))
        t.add_observation(self.tokens.encode(text), text)
        t.state = AgentState.GENERATE
        if not t.final_turn and t.turns >= t.request.max_turns:
            t.final_turn = True
            self._observe(t, FINAL_NUDGE)
            self._force_answer(t)

    def _force_answer(self, t: Trajectory) -> None:
        """Open the answer block for the final turn, as direct / rag do in their prompt: an episode at the
        turn limit then still ends with an answer to score (RL needs that signal). The opening tag is the
        environment's text, so it is masked (0) like an observation."""
        if t.state is AgentState.DONE or t.forced_answer:
            return
        ids = self.tokens.encode(ANSWER_PREFILL)
        t.add_observation(ids, ANSWER_PREFILL)
        t.forced_answer = True

    # -- results -----------------------------------------------------------------------------
    def response_text(self, t: Trajectory) -> str:
        return t.prefill + t.text

    def answer(self, t: Trajectory) -> str | None:
        if t.method == "noop" or t.finish_reason == "error":
            return None
        return extract_answer(self.response_text(t), t.template, allow_unclosed=bool(t.prefill) or t.forced_answer)

    @staticmethod
    def judge_item(t: Trajectory, answer: str | None) -> dict[str, Any] | None:
        """What to ask the judge for this episode (None: its reward does not use the judge)."""
        if t.request.reward.metric != "llm" or answer is None or not t.request.ground_truth:
            return None
        return {"question": t.request.question, "gold": t.request.ground_truth, "prediction": answer}

    def result(self, t: Trajectory, answer: str | None, judge_score: float | None) -> EpisodeResult:
        req = t.request
        result = EpisodeResult(
            job_id=req.job_id, episode_id=req.episode_id, group_id=req.group_id, policy_version=self.policy_version,
            worker=self.worker, prompt_ids=t.prompt_ids, response_ids=t.response_ids, loss_mask=t.loss_mask,
            logprobs=t.logprobs, text=t.text, answer=answer, turns=t.turns, searches=t.searches,
            search_failures=t.search_failures, finish_reason=t.finish_reason, error=t.error,
            elapsed_s=time.monotonic() - t.started,
        )
        if req.method == "noop" or t.error is not None or not req.ground_truth:
            return result
        judged = req.reward.metric == "llm"
        config = RewardConfig(template=t.template.name, metric="f1" if judged else req.reward.metric,
                              format_weight=req.reward.format_weight, allow_unclosed_answer=bool(t.prefill) or t.forced_answer)
        parts = compute_reward(req.reward.kind, self.response_text(t), req.ground_truth, config,
                               answer_score=judge_score, response_length=len(t.response_ids))
        result.reward = parts.total
        result.reward_parts = {"format": parts.format, "answer": parts.answer, "penalty": parts.penalty,
                               "format_ok": float(parts.format_ok), "invalid_actions": float(t.invalid_actions)}
        if judged:
            result.reward_parts["judge_failed"] = float(judge_score is None and answer is not None)
        result.scores = {m: best_match(answer, req.ground_truth, m).score if answer else 0.0
                         for m in SCORE_METRICS if m in METRICS}
        return result


# --------------------------------------------------------------------------- runner


class AgentRunner(EpisodeSteps):
    """Runs batches of episodes with one policy backend, the search backends and (optionally) the judge."""

    def __init__(self, backend: LLMBackend, search: SearchRegistry, judge: JudgeClient | None = None,
                 worker: str = "", policy_version: int = 0):
        super().__init__(backend, worker, policy_version)
        self.backend = backend
        self.search = search
        self.judge = judge

    def run(self, requests: Sequence[EpisodeRequest]) -> list[EpisodeResult]:
        """Run ``requests`` together to completion; results in request order."""
        trajs = [self.start(r) for r in requests]
        while True:
            waiting = [t for t in trajs if t.state is AgentState.GENERATE]
            if waiting:
                self._generate(waiting)
            searching = [t for t in trajs if t.state is AgentState.SEARCH]
            if searching:
                self._search(searching)
            if not waiting and not searching:
                break
        return self._results(trajs)

    def _generate(self, trajs: list[Trajectory]) -> None:
        groups: dict[tuple[float, float, tuple[str, ...], int], list[Trajectory]] = defaultdict(list)
        for t in trajs:
            s = t.request.sampling
            groups[(s.temperature, s.top_p, self.stops(t), self.answer_minimum(t))].append(t)
        for (temperature, top_p, stops, min_new), group in groups.items():
            limits = [min(t.request.sampling.max_new_tokens, t.remaining) for t in group]
            seed = next((t.request.sampling.seed for t in group if t.request.sampling.seed is not None), None)
            params = SamplingParams(max_new_tokens=max(limits), temperature=temperature, top_p=top_p,
                                    stop=list(stops), seed=None if seed is None else seed + group[0].turns,
                                    min_content_tokens=min_new)
            gens = self.backend.generate([t.prompt_ids + t.response_ids for t in group], params)
            for t, gen, limit in zip(group, gens, limits, strict=True):
                self.after_generation(t, gen, limit)

    def _search(self, trajs: list[Trajectory]) -> None:
        by_backend: dict[str, list[Trajectory]] = defaultdict(list)
        for t in trajs:
            by_backend[t.request.search_backend].append(t)
        for name, group in by_backend.items():
            queries = [self.search_query(t) for t in group]
            try:
                outcomes = self.search.get(name).search(queries)
            except ValueError as exc:  # backend unknown or not configured on this worker
                outcomes = [SearchOutcome(error=str(exc)) for _ in group]
            for t, outcome in zip(group, outcomes, strict=True):
                self.after_search(t, outcome)

    def _results(self, trajs: list[Trajectory]) -> list[EpisodeResult]:
        answers = [self.answer(t) for t in trajs]
        judged = self._judge(trajs, answers)
        return [self.result(t, a, judged.get(i)) for i, (t, a) in enumerate(zip(trajs, answers, strict=True))]

    def _judge(self, trajs: list[Trajectory], answers: list[str | None]) -> dict[int, float | None]:
        """LLM-judge scores for episodes whose reward metric is ``llm`` (index -> score; None: judge failed)."""
        wanted = {i: item for i, (t, a) in enumerate(zip(trajs, answers, strict=True))
                  if (item := self.judge_item(t, a)) is not None}
        if not wanted:
            return {}
        if self.judge is None:
            log.warning("reward metric 'llm' asked but no judge is configured (WORKER_JUDGE_URL); using f1")
            return dict.fromkeys(wanted)
        try:
            scores = self.judge.judge(list(wanted.values()), "llm").scores
        except ServiceCallError as exc:
            log.warning("judge failed (%s); rule metric f1 used instead", exc)
            return dict.fromkeys(wanted)
        return dict(zip(wanted, scores, strict=True))
