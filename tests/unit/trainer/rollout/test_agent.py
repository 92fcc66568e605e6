"""The agent loop's state machine, with a scripted policy and search (pure logic: fakes are fine here).

The policy is a character-level fake: one token per character, so token spans map to text exactly.
Real models, Redis and services are exercised in tests/integration/trainer/.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pytest

from services.trainer.rollout.agent import FINAL_NUDGE, INVALID_ACTION, AgentRunner
from services.trainer.rollout.search import SearchOutcome, SearchQuery
from shared.llm import Generation, SamplingParams
from shared.schemas import EpisodeRequest, EpisodeSampling

Script = Callable[[str], str]  # whole context so far -> the policy's next turn


class CharPolicy:
    """A fake LLM backend: characters are tokens; the next turn comes from a script."""

    model_name = "fake"

    def __init__(self, script: Script):
        self.script = script
        self.calls: list[int] = []  # batch size of each generate call

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        return self.encode("".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>")

    def chat(self, conversations: Sequence[list[dict[str, str]]], sampling: SamplingParams) -> list[str]:
        raise NotImplementedError

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingParams) -> list[Generation]:
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            text = self.script(self.decode(p))
            reason = "length"
            for stop in sampling.stop:
                at = text.find(stop)
                if at >= 0:
                    text, reason = text[:at + len(stop)], "stop"
            text = text[:sampling.max_new_tokens]
            ids = self.encode(text)
            out.append(Generation(ids, [-0.5] * len(ids), text, reason))
        return out


class FakeSearch:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.queries: list[SearchQuery] = []

    def get(self, name: str) -> FakeSearch:
        return self

    def search(self, queries: Sequence[SearchQuery]) -> list[SearchOutcome]:
        self.queries += queries
        if self.fail:
            return [SearchOutcome(error="ConnectError: connection refused") for _ in queries]
        return [SearchOutcome([{"id": "1", "title": "Paris", "text": f"Paris is the capital of France ({q.query})."}])
                for q in queries]


def searcher_then_answer(context: str) -> str:
    if "<information>" not in context.split("<assistant>")[-1]:
        return "<think> I need to look it up. </think> <search> capital of France </search> and more"
    return "<think> Found it. </think> <answer> Paris </answer>"


def request(method: str = "agent", **kw: object) -> EpisodeRequest:
    base: dict[str, object] = {"job_id": "j", "episode_id": "e1", "method": method,
                               "question": "What is the capital of France?", "ground_truth": ["Paris"],
                               "sampling": EpisodeSampling(max_new_tokens=200, temperature=0.0)}
    base.update(kw)
    return EpisodeRequest.model_validate(base)


def spans(mask: list[int], value: int) -> list[tuple[int, int]]:
    out, start = [], None
    for i, m in enumerate([*mask, -1]):
        if m == value and start is None:
            start = i
        elif m != value and start is not None:
            out.append((start, i))
            start = None
    return out


def test_search_then_answer_masks_exactly_the_observation() -> None:
    search = FakeSearch()
    r = AgentRunner(CharPolicy(searcher_then_answer), search).run([request()])[0]  # type: ignore[arg-type]
    assert (r.finish_reason, r.answer, r.turns, r.searches, r.search_failures) == ("answer", "Paris", 2, 1, 0)
    assert search.queries[0].query == "capital of France"
    assert len(r.response_ids) == len(r.loss_mask) == len(r.logprobs)
    text = "".join(chr(i) for i in r.response_ids)
    assert text == r.text
    observed = spans(r.loss_mask, 0)
    assert len(observed) == 1
    a, b = observed[0]
    assert text[a:b].strip().startswith("<information>") and text[a:b].strip().endswith("</information>")
    assert "Paris is the capital" in text[a:b]
    assert "<information>" not in text[:a] + text[b:]
    assert all(lp == 0.0 for lp in r.logprobs[a:b])
    assert all(lp == -0.5 for i, lp in enumerate(r.logprobs) if not a <= i < b)
    assert r.scores["em"] == 1.0 and r.scores["f1"] == 1.0
    assert r.reward > 0


def test_text_after_the_stop_string_is_never_kept() -> None:
    r = AgentRunner(CharPolicy(searcher_then_answer), FakeSearch()).run([request()])[0]  # type: ignore[arg-type]
    assert "and more" not in r.text


def test_failed_search_is_an_observation_and_a_count() -> None:
    r = AgentRunner(CharPolicy(searcher_then_answer), FakeSearch(fail=True)).run([request()])[0]  # type: ignore[arg-type]
    assert r.error is None and r.search_failures == 1 and r.searches == 1
    assert "The search failed (ConnectError" in r.text
    assert r.finish_reason == "answer"


def test_turn_limit_gives_one_final_turn_with_a_nudge() -> None:
    def always_search(context: str) -> str:
        if FINAL_NUDGE in context:
            return "<answer> Lyon </answer>"
        return "<search> more </search>"

    r = AgentRunner(CharPolicy(always_search), FakeSearch()).run([request(max_turns=2)])[0]  # type: ignore[arg-type]
    assert r.searches == 2 and r.turns == 3 and r.finish_reason == "answer" and r.answer == "Lyon"
    assert r.text.count(FINAL_NUDGE) == 1
    assert r.scores["em"] == 0.0


def test_no_answer_after_the_final_turn_ends_the_episode() -> None:
    r = AgentRunner(CharPolicy(lambda c: "<search> more </search>"), FakeSearch()).run(  # type: ignore[arg-type]
        [request(max_turns=1)])[0]
    assert r.finish_reason == "turn_limit" and r.answer is None and r.turns == 2
    assert r.scores["cover_em"] == 0.0 and r.reward == 0.0


def test_invalid_action_gets_the_search_r1_hint() -> None:
    def rambler(context: str) -> str:
        return "<answer> Paris </answer>" if INVALID_ACTION in context else "I think it is Paris."

    r = AgentRunner(CharPolicy(rambler), FakeSearch()).run([request()])[0]  # type: ignore[arg-type]
    assert r.reward_parts["invalid_actions"] == 1.0 and r.finish_reason == "answer" and r.searches == 0
    a, b = spans(r.loss_mask, 0)[0]
    assert INVALID_ACTION in r.text[a:b]


def test_token_budget_bounds_the_response() -> None:
    r = AgentRunner(CharPolicy(lambda c: "<search> " + "x" * 80 + " </search>"), FakeSearch()).run(  # type: ignore[arg-type]
        [request(max_total_tokens=150, max_turns=5)])[0]
    assert len(r.response_ids) <= 150
    assert r.finish_reason == "token_limit"


def test_observation_is_truncated_to_its_budget() -> None:
    r = AgentRunner(CharPolicy(searcher_then_answer), FakeSearch()).run([request(obs_max_tokens=20)])[0]  # type: ignore[arg-type]
    a, b = spans(r.loss_mask, 0)[0]
    assert "Doc 1(Title: Pari" in r.text[a:b] and "capital" not in r.text[a:b]


def test_episodes_of_a_turn_are_generated_in_one_batch() -> None:
    policy = CharPolicy(searcher_then_answer)
    reqs = [request(episode_id=f"e{i}") for i in range(5)]
    results = AgentRunner(policy, FakeSearch()).run(reqs)  # type: ignore[arg-type]
    assert [r.episode_id for r in results] == [f"e{i}" for i in range(5)]
    assert policy.calls == [5, 5]


def test_direct_answers_without_search_from_a_prefilled_answer() -> None:
    search = FakeSearch()
    r = AgentRunner(CharPolicy(lambda c: " Paris </answer>"), search).run([request("direct")])[0]  # type: ignore[arg-type]
    assert (r.answer, r.searches, r.turns, r.finish_reason) == ("Paris", 0, 1, "answer")
    assert not search.queries
    assert "".join(chr(i) for i in r.prompt_ids).endswith("<answer>")
    assert set(r.loss_mask) == {1}


def test_rag_retrieves_once_with_the_question() -> None:
    search = FakeSearch()
    seen: list[str] = []

    def policy(context: str) -> str:
        seen.append(context)
        return " Paris </answer>"

    r = AgentRunner(CharPolicy(policy), search).run([request("rag")])[0]  # type: ignore[arg-type]
    assert [q.query for q in search.queries] == ["What is the capital of France?"]
    assert "Paris is the capital of France" in seen[0]
    assert (r.answer, r.searches, r.scores["em"]) == ("Paris", 1, 1.0)


def test_unclosed_direct_answer_cut_by_length_still_counts() -> None:
    r = AgentRunner(CharPolicy(lambda c: " Paris and so on"), FakeSearch()).run(  # type: ignore[arg-type]
        [request("direct", sampling=EpisodeSampling(max_new_tokens=6))])[0]
    assert r.finish_reason == "token_limit" and r.answer == "Paris"


def test_noop_and_bad_template() -> None:
    runner = AgentRunner(CharPolicy(searcher_then_answer), FakeSearch())  # type: ignore[arg-type]
    noop, bad = runner.run([request("noop"), request(episode_id="e2", template="nope")])
    assert noop.finish_reason == "noop" and noop.response_ids == []
    assert bad.finish_reason == "error" and "unknown template" in (bad.error or "")


@pytest.mark.parametrize("template", ["search_r1", "research"])
def test_observation_uses_the_template_tag(template: str) -> None:
    tag = "information" if template == "search_r1" else "result"

    def policy(context: str) -> str:
        if f"<{tag}>" in context.split("<assistant>")[-1]:
            return "<answer> \\boxed{Paris} </answer>"
        return "<search> capital </search>"

    r = AgentRunner(CharPolicy(policy), FakeSearch()).run([request(template=template)])[0]  # type: ignore[arg-type]
    a, b = spans(r.loss_mask, 0)[0]
    assert re.fullmatch(rf"\s*<{tag}>.*</{tag}>\s*", r.text[a:b], re.S)
    assert r.answer in ("Paris", "\\boxed{Paris}")


def test_an_observation_the_policy_fabricates_is_cut_and_not_trained_on() -> None:
    def fabricator(context: str) -> str:
        if INVALID_ACTION in context:
            return "<answer> Paris </answer>"
        return "Let me recall. <information> Paris is the capital </information> <answer> Paris </answer>"

    r = AgentRunner(CharPolicy(fabricator), FakeSearch()).run([request()])[0]  # type: ignore[arg-type]
    assert r.reward_parts["invalid_actions"] == 1.0 and r.answer == "Paris"
    a, b = spans(r.loss_mask, 0)[0]
    policy_text = r.text[:a] + r.text[b:]
    assert "<information>" not in policy_text and r.text[:a] == "Let me recall. "


class RecordingPolicy(CharPolicy):
    """CharPolicy that records each generation's ``min_content_tokens`` (what the backend is asked to hold back)."""

    def __init__(self, script: Script):
        super().__init__(script)
        self.min_new: list[int] = []

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingParams) -> list[Generation]:
        self.min_new += [sampling.min_content_tokens] * len(prompts)
        return super().generate(prompts, sampling)


ANSWER_RULE = EpisodeSampling(max_new_tokens=200, temperature=0.0, min_answer_tokens=1)


@pytest.mark.parametrize("method", ["direct", "rag"])
def test_answer_rule_applies_to_the_prefilled_answer_turn(method: str) -> None:
    policy = RecordingPolicy(lambda c: " Paris </answer>")
    AgentRunner(policy, FakeSearch()).run([request(method, sampling=ANSWER_RULE)])  # type: ignore[arg-type]
    assert policy.min_new == [1]
    off = RecordingPolicy(lambda c: " Paris </answer>")
    AgentRunner(off, FakeSearch()).run([request(method)])  # type: ignore[arg-type]
    assert off.min_new == [0]  # the default (RL): no minimum


def test_answer_rule_applies_to_the_agents_forced_final_turn_only() -> None:
    policy = RecordingPolicy(lambda c: "<search> capital of France </search>" if c.count("<information>") < 2
                             else " Paris </answer>")
    r = AgentRunner(policy, FakeSearch()).run(  # type: ignore[arg-type]
        [request(max_turns=1, sampling=ANSWER_RULE)])[0]
    assert policy.min_new == [0, 1]  # the search turn is free; the turn after the nudge opened <answer> is not
    assert r.answer == "Paris"


def test_an_agents_empty_answer_is_reopened_once_under_the_rule() -> None:
    def policy(context: str) -> str:
        return " Paris </answer>" if context.endswith("<answer>") else "<think> done </think> <answer> </answer>"

    rec = RecordingPolicy(policy)
    r = AgentRunner(rec, FakeSearch()).run([request(sampling=ANSWER_RULE)])[0]  # type: ignore[arg-type]
    assert (r.answer, r.turns, rec.min_new) == ("Paris", 2, [0, 1])
    reopened = r.text.index("<answer> </answer>") + len("<answer> </answer>")
    assert r.loss_mask[reopened:reopened + len("<answer>")] == [0] * len("<answer>")  # the environment's tag
    without = AgentRunner(CharPolicy(policy), FakeSearch()).run([request()])[0]  # type: ignore[arg-type]
    assert (without.answer, without.turns) == (None, 1)  # rule off: the empty answer stands (scores 0)
