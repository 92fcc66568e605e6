"""Rewards: format state machine, Search-R1 / ReSearch / hybrid rewards, guards and overlong penalty."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.metrics import f1_score
from shared.protocol import get_template
from shared.rewards import (
    REWARDS,
    GuardConfig,
    OverlongConfig,
    RewardBreakdown,
    RewardConfig,
    answer_candidates,
    answer_reward,
    check_format,
    compute_reward,
    enumeration_guard,
    get_reward_fn,
    hybrid_reward,
    overlong_penalty,
    research_reward,
    search_r1_reward,
)

OBS = get_template("search_r1").format_observation([{"title": "Paris", "text": "Capital of France."}])
GOOD = f"<think> need data </think>\n<search> capital of France </search>{OBS}<think> it is Paris </think>\n<answer> Paris </answer>"
RESEARCH_OBS = get_template("research").format_observation([{"title": "Paris", "text": "Capital."}])
RESEARCH_GOOD = (
    f"<think> look up </think> <search> capital of France </search>{RESEARCH_OBS} <think> found </think> "
    "<answer> The final answer is \\[ \\boxed{Paris} \\] </answer>"
)


def _parts_add_up(b: RewardBreakdown) -> None:
    assert b.total == pytest.approx(b.format + b.answer + b.penalty)


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    "response",
    [
        GOOD,
        "<think> I know </think><answer> Paris </answer>",
        "  <think>a</think>  <answer>b</answer>\n",
        f"<think>a</think><search>q1</search>{OBS}<think>b</think><search>q2</search>{OBS}<think>c</think><answer>x</answer>",
    ],
)
def test_format_ok(response: str) -> None:
    check = check_format(response)
    assert check.ok, check.reason
    assert check.n_answer == 1


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ("<answer> Paris </answer>", "unexpected <answer> in state start"),  # no think first
        ("<think> a </think>", "incomplete"),  # no answer
        ("<think> a </think><answer> A </answer><answer> B </answer>", "unexpected <answer> in state end"),
        ("<think> a </think><search> q </search><answer> A </answer>", "unexpected <answer> in state searched"),
        (f"<think> a </think><search> q </search>{OBS}<answer> A </answer>", "unexpected <answer> in state observed"),
        ("<think> a <think> b </think></think><answer> A </answer>", "unexpected <think> in state in_think"),
        ("<think> a </think> so: <answer> A </answer>", "text outside tags"),
        ("<think> a </think><answer> A </answer> trailing", "text outside tags"),
        ("<think> a </think><answer> Paris", "incomplete"),
        ("", "incomplete"),
    ],
)
def test_format_bad(response: str, reason: str) -> None:
    check = check_format(response)
    assert not check.ok
    assert reason in check.reason


def test_format_stray_text_option_and_research_tags() -> None:
    assert check_format("<think> a </think> so: <answer> A </answer>", allow_stray_text=True).ok
    assert not check_format("<think> a </think><answer> A </answer> trailing", allow_stray_text=True).ok
    assert check_format(RESEARCH_GOOD, "research").ok
    assert not check_format(GOOD, "research").ok  # <information> is not a research tag, no \boxed
    no_box = "<think> a </think> <answer> Paris </answer>"
    assert check_format(no_box, "research").reason == "answer is missing \\boxed{}"


# --------------------------------------------------------------------------- answer part and guards


def test_answer_reward_uses_metrics() -> None:
    assert answer_reward(None, ["Paris"], "f1").score == 0.0
    result = answer_reward("Barack Obama president", ["Obama", "Barack Obama"], "f1")
    assert result.score == pytest.approx(f1_score("Barack Obama president", "Barack Obama"))
    assert result.gold == "Barack Obama"
    with pytest.raises(ValueError, match="valid: acc, cover_em, em, f1, recall"):
        answer_reward(None, ["x"], "bleu")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Paris", ["Paris"]),
        ("Paris, London, Berlin, Rome", ["Paris", "London", "Berlin", "Rome"]),
        ("Paris or London", ["Paris", "London"]),
        ("Paris / London; Rome", ["Paris", "London", "Rome"]),
        ("June 5, 1990", ["June 5, 1990"]),  # a date is one candidate
        ("2006, 2012, 1995", ["2006", "2012", "1995"]),
        ("1,000,000", ["1,000,000"]),
        ("Anthony Russo and Joe Russo", ["Anthony Russo and Joe Russo"]),
        ("Paris;", ["Paris"]),
    ],
)
def test_answer_candidates(answer: str, expected: list[str]) -> None:
    assert answer_candidates(answer) == expected


def test_guard_flags_enumeration_and_padding() -> None:
    assert enumeration_guard("Paris", ["Paris"]).flags == ()
    four = enumeration_guard("Paris, London, Berlin, Rome", ["Paris"])
    assert "enumeration" in four.flags and four.factor == pytest.approx(0.25)
    assert enumeration_guard("Paris or London", ["Paris"]).factor == pytest.approx(0.5)
    # gold itself lists two items: two candidates are fine, three are not
    assert enumeration_guard("X; Y", ["X; Y"]).factor == 1.0
    assert enumeration_guard("X; Y; Z", ["X; Y"]).factor == pytest.approx(2 / 3)
    # padding: gold 1 token -> at most max(3*1, 1+2) = 3 tokens; 6 tokens -> factor 3/6
    padded = enumeration_guard("Paris is capital city of France", ["Paris"])
    assert padded.flags == ("length",) and padded.factor == pytest.approx(0.5)
    assert enumeration_guard("Paris, London", ["Paris"], GuardConfig(action="zero")).factor == 0.0
    assert enumeration_guard("Paris, London", ["Paris"], GuardConfig(max_extra_candidates=1)).factor == 1.0
    assert enumeration_guard("Paris, London", ["Paris"], GuardConfig(enabled=False)).factor == 1.0
    assert enumeration_guard("Paris, London", []).factor == 1.0


@pytest.mark.parametrize("metric", ["em", "cover_em", "f1", "recall"])
@pytest.mark.parametrize("listing", ["Paris, London, Berlin, Rome", "Paris or London", "London / Paris"])
def test_enumeration_never_beats_the_right_answer(metric: str, listing: str) -> None:
    config = RewardConfig(metric=metric)
    right = hybrid_reward("<think> t </think><answer> Paris </answer>", ["Paris"], config=config)
    listed = hybrid_reward(f"<think> t </think><answer> {listing} </answer>", ["Paris"], config=config)
    assert listed.total < right.total
    assert "enumeration" in listed.flags


# --------------------------------------------------------------------------- reward functions


def test_hybrid_reward_parts() -> None:
    b = hybrid_reward(GOOD, ["Paris"])
    assert (b.format, b.answer, b.penalty, b.total) == (pytest.approx(0.2), 1.0, 0.0, pytest.approx(1.2))
    assert b.format_ok and b.answer_text == "Paris" and b.matched_gold == "Paris"
    wrong = hybrid_reward(GOOD, ["London"])
    assert wrong.total == pytest.approx(0.2)
    malformed = hybrid_reward("<answer> Paris </answer>", ["Paris"], config=RewardConfig(format_weight=0.5))
    assert not malformed.format_ok and malformed.total == 1.0
    weighted = hybrid_reward(GOOD, ["Paris"], config=RewardConfig(format_weight=0.1, answer_weight=0.9))
    assert weighted.total == pytest.approx(1.0)
    for part in (b, wrong, malformed, weighted):
        _parts_add_up(part)


def test_missing_answer_scores_zero_never_raises() -> None:
    for name in REWARDS:
        for response in ("", "<think> hmm", "<answer>", "<answer></answer>", "</answer><answer>"):
            b = compute_reward(name, response, ["Paris"], answer_score=1.0)
            assert b.answer == 0.0
            assert b.answer_text is None
            _parts_add_up(b)


def test_judge_score_plugs_in() -> None:
    judged = hybrid_reward(GOOD, ["the capital of France"], answer_score=1.0)
    assert judged.answer == 1.0 and judged.total == pytest.approx(1.2) and judged.matched_gold is None
    rejected = hybrid_reward(GOOD, ["Paris"], answer_score=0.0)
    assert rejected.total == pytest.approx(0.2)
    # the guard applies to judge scores too
    listed = "<think> t </think><answer> Paris, London, Berlin, Rome </answer>"
    guarded = hybrid_reward(listed, ["Paris"], answer_score=1.0)
    assert guarded.answer == 1.0 and guarded.penalty == pytest.approx(-0.75) and guarded.total == pytest.approx(0.45)


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        (GOOD, "Paris", 1.0),  # right answer, well formed
        (GOOD, "London", 0.2),  # wrong answer, well formed: structure_format_score
        ("<answer> Paris </answer>", "Paris", 0.8),  # right answer, malformed
        ("<answer> Rome </answer>", "Paris", 0.1),  # wrong answer, malformed: final_format_score
        ("<think> hmm", "Paris", 0.0),  # malformed, no answer
    ],
)
def test_search_r1_reward_table(response: str, gold: str, expected: float) -> None:
    b = search_r1_reward(response, [gold])
    assert b.total == pytest.approx(expected)
    _parts_add_up(b)


def test_research_reward() -> None:
    assert research_reward(RESEARCH_GOOD, ["Paris"]).total == 1.0
    partial = research_reward(RESEARCH_GOOD, ["Paris France"])
    assert partial.total == pytest.approx(f1_score("Paris", "Paris France"))
    wrong = research_reward(RESEARCH_GOOD, ["London"])
    assert wrong.total == pytest.approx(0.1) and wrong.format == pytest.approx(0.1)
    unboxed = "<think> a </think> <answer> Paris </answer>"
    bad = research_reward(unboxed, ["Paris"])
    assert bad.total == 0.0 and not bad.format_ok and bad.answer_text == "Paris"
    for b in (partial, wrong, bad):
        _parts_add_up(b)


def test_overlong_penalty() -> None:
    # max 100, cache 20: free up to 80, linear to -1 at 100, -1 beyond
    assert overlong_penalty(50, 100, 20) == 0.0
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(90, 100, 20) == pytest.approx(-0.5)
    assert overlong_penalty(100, 100, 20) == -1.0
    assert overlong_penalty(500, 100, 20) == -1.0
    assert overlong_penalty(95, 100, 20, penalty_factor=0.5) == pytest.approx(-0.375)
    assert overlong_penalty(101, 100, 0) == -1.0
    config = RewardConfig(overlong=OverlongConfig(max_length=100, cache_length=20))
    b = hybrid_reward(GOOD, ["Paris"], config=config, response_length=90)
    assert b.penalty == pytest.approx(-0.5) and b.total == pytest.approx(0.7)
    assert hybrid_reward(GOOD, ["Paris"], config=config).penalty == 0.0  # no length given


def test_reward_registry() -> None:
    assert set(REWARDS) == {"hybrid", "search_r1", "research"}
    assert get_reward_fn("hybrid") is hybrid_reward
    with pytest.raises(ValueError, match="hybrid, research, search_r1"):
        get_reward_fn("ppo")
    assert compute_reward("research", RESEARCH_GOOD, "Paris").total == 1.0


def test_unclosed_answer_option() -> None:
    truncated = "<think> t </think><answer> Paris"
    assert hybrid_reward(truncated, ["Paris"]).answer == 0.0
    b = hybrid_reward(truncated, ["Paris"], config=RewardConfig(allow_unclosed_answer=True))
    assert b.answer == 1.0 and not b.format_ok


@settings(max_examples=200, deadline=None)
@given(
    response=st.lists(
        st.sampled_from(["<think>", "</think>", "<search>", "</search>", "<information>", "</information>",
                         "<result>", "</result>", "<answer>", "</answer>", "\\boxed{", "}", " Paris ", ", ", " or "])
        | st.text(max_size=6),
        max_size=25,
    ).map("".join),
    name=st.sampled_from(sorted(REWARDS)),
    score=st.none() | st.floats(0, 1),
)
def test_rewards_never_raise_and_stay_bounded(response: str, name: str, score: float | None) -> None:
    b = compute_reward(name, response, ["Paris"], answer_score=score, response_length=len(response))
    _parts_add_up(b)
    assert -1.0 <= b.total <= 1.2 + 1e-9
