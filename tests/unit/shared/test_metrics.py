"""Answer metrics: hand-computed cases, FanOutQA structured answers and the real dev rows."""

from __future__ import annotations

import pytest

from shared.data import dataset_path, read_jsonl
from shared.metrics import (
    METRIC_DEFINITIONS,
    METRICS,
    MatchResult,
    answer_raw_recall,
    best_match,
    cover_em,
    exact_match,
    f1_score,
    flatten_answer_raw,
    get_metric,
    gold_answers,
    normalize_answer,
    score_answer,
    substring_acc,
    token_recall,
    tokens,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  an   Apple, a day!  ", "apple day"),
        ("J. J. Abrams", "j j abrams"),
        ("Lai Ching-te", "lai chingte"),  # punctuation is removed, not replaced by a space
        ("Theater", "theater"),  # "the" only as a whole word
        ("A", ""),
        ("", ""),
        ("U.S.A.", "usa"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_tokens() -> None:
    assert tokens("The cat, the hat.") == ["cat", "hat"]


def test_exact_match() -> None:
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0


def test_cover_em_is_token_containment() -> None:
    assert cover_em("It is the Eiffel Tower, in Paris", "eiffel tower") == 1.0
    assert cover_em("Paris", "Eiffel Tower") == 0.0
    assert cover_em("martial arts", "art") == 0.0  # no partial-word match
    assert cover_em("anything", "the") == 0.0  # gold normalizing to nothing never matches


@pytest.mark.parametrize(
    ("pred", "gold", "acc", "cover"),
    [
        ("Parisian", "Paris", 1.0, 0.0),  # the field's acc is a plain substring; cover-EM wants whole tokens
        ("martial arts", "art", 1.0, 0.0),
        ("“Hello”", "Hello", 1.0, 1.0),  # curly quotes survive ASCII normalization; for cover-EM a boundary
        ("It was Paris…", "Paris", 1.0, 1.0),
        ("Paris—the capital", "Paris", 1.0, 1.0),
        ("«Paris»", "Paris", 1.0, 1.0),
        ("‘Rock ’n’ roll’", "rock n roll", 0.0, 1.0),  # the same boundaries on the gold side
        ("It is the Eiffel Tower, in Paris", "eiffel tower", 1.0, 1.0),
        ("London", "Paris", 0.0, 0.0),
        ("anything", "the", 0.0, 0.0),  # a gold normalizing to nothing never matches (the references: 1)
    ],
)
def test_acc_is_substring_and_cover_em_is_token_containment(pred: str, gold: str, acc: float, cover: float) -> None:
    assert substring_acc(pred, gold) == acc
    assert cover_em(pred, gold) == cover
    if pred.isascii():
        assert cover <= acc  # on ASCII text cover-EM is never the more lenient one


def test_normalization_and_em_stay_the_references() -> None:
    """Only cover-EM treats Unicode punctuation as a boundary: EM stays Search-R1's / FlashRAG's exactly."""
    assert normalize_answer("“Hello”") == "“hello”"
    assert exact_match("“Hello”", "Hello") == 0.0


def test_f1_hand_computed() -> None:
    # pred tokens: [barack, obama, president] ; gold: [barack, obama] -> P=2/3, R=1, F1=0.8
    assert f1_score("Barack Obama, president", "Barack Obama") == pytest.approx(0.8)
    # multiset overlap: pred [new, york, new] vs gold [new, york] -> common 2, P=2/3, R=1
    assert f1_score("new york new", "New York") == pytest.approx(0.8)
    assert f1_score("London", "Paris") == 0.0
    assert f1_score("", "") == 0.0  # HotpotQA / FlashRAG: no common token is 0, both sides empty too
    assert f1_score("The", "a") == 0.0
    assert f1_score("", "Paris") == 0.0


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("yes", "yes", 1.0),
        ("Yes.", "yes", 1.0),
        ("yes", "no", 0.0),
        ("no", "no way", 0.0),  # gold differs from the special prediction
        ("yes it is", "yes", 0.0),  # special gold, prediction differs: no partial credit
        ("noanswer", "no answer", 0.0),
    ],
)
def test_f1_yes_no_rule(pred: str, gold: str, expected: float) -> None:
    assert f1_score(pred, gold) == expected


def test_token_recall() -> None:
    # gold [barack, obama] fully present in a long prediction
    assert token_recall("It was Barack Hussein Obama", "Barack Obama") == 1.0
    # gold [anthony, russo, and, joe, russo]: pred has anthony, russo x1 -> 2/5
    assert token_recall("Anthony Russo", "Anthony Russo and Joe Russo") == pytest.approx(0.4)
    assert token_recall("anything", "") == 0.0


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("yes or no", "no", 0.0),  # FlashRAG / HotpotQA: a yes/no gold needs exactly that answer
        ("no", "no", 1.0),
        ("yes", "no", 0.0),
        ("no", "no way", 0.0),
        ("Barack Obama", "Barack Obama", 1.0),
    ],
)
def test_token_recall_yes_no_rule(pred: str, gold: str, expected: float) -> None:
    assert token_recall(pred, gold) == expected


def test_best_match_returns_score_and_gold() -> None:
    result = best_match("Samuel Clemens", ["Mark Twain", "Samuel Langhorne Clemens", "Samuel Clemens"], "f1")
    assert result == MatchResult(1.0, "Samuel Clemens")
    partial = best_match("Samuel Clemens", ["Mark Twain", "Samuel Langhorne Clemens"], "f1")
    assert partial.gold == "Samuel Langhorne Clemens"
    assert partial.score == pytest.approx(0.8)
    assert best_match("x", [], "em") == MatchResult(0.0, None)
    assert best_match("Paris", ["London", "Rome"], "em") == MatchResult(0.0, "London")


def test_score_answer_accepts_single_gold_and_callable() -> None:
    assert score_answer("Paris", "paris", "em") == 1.0
    assert score_answer("Paris", ["Rome", "paris"], exact_match) == 1.0


def test_metric_registry() -> None:
    assert set(METRICS) == {"em", "acc", "cover_em", "f1", "recall"}
    assert set(METRIC_DEFINITIONS) == set(METRICS)
    assert get_metric("f1") is f1_score
    assert get_metric("acc") is substring_acc
    with pytest.raises(ValueError, match="acc, cover_em, em, f1, recall"):
        get_metric("bleu")


def test_flatten_answer_raw_shapes() -> None:
    raw = {"Avatar": "James Cameron", "Titanic": "James Cameron"}
    assert flatten_answer_raw(raw) == ["James Cameron", "James Cameron"]
    assert flatten_answer_raw(raw, include_keys=True) == ["Avatar", "James Cameron", "Titanic", "James Cameron"]
    assert flatten_answer_raw([2006, 2012]) == ["2006", "2012"]
    assert flatten_answer_raw({"Sao Paulo": 37.0, "Delhi": 49.2}) == ["37.0", "49.2"]
    assert flatten_answer_raw({"Chris Evans": False, "Samuel L. Jackson": True}) == ["no", "yes"]
    assert flatten_answer_raw("Spain") == ["Spain"]
    assert flatten_answer_raw(3) == ["3"]
    assert flatten_answer_raw(None) == []
    assert flatten_answer_raw({"a": ["x", {"b": "y"}]}, include_keys=True) == ["a", "x", "b", "y"]


def test_answer_raw_recall_dict_answer() -> None:
    raw = {
        "Avatar": "James Cameron",
        "Avengers: Endgame": "Anthony Russo and Joe Russo",
        "Titanic": "James Cameron",
        "Star Wars: The Force Awakens": "J. J. Abrams",
    }
    pred = "Avatar and Titanic were directed by James Cameron; The Force Awakens by J.J. Abrams."
    # values: Cameron found twice, Russos missing, "j j abrams" vs "jj abrams" missing -> 2/4
    assert answer_raw_recall(pred, raw) == pytest.approx(0.5)
    # keys + values (FanOutQA loose accuracy): keys Avatar, Titanic found; the other two not -> 4/8
    assert answer_raw_recall(pred, raw, include_keys=True) == pytest.approx(0.5)
    full = "; ".join(f"{k}: {v}" for k, v in raw.items())
    assert answer_raw_recall(full, raw, include_keys=True) == 1.0
    assert answer_raw_recall("anything", {}) == 0.0


def test_answer_raw_recall_primitives() -> None:
    assert answer_raw_recall("The answer is 40.", 40) == 1.0
    assert answer_raw_recall("No, he was not.", False) == 1.0
    assert answer_raw_recall("2006 and 2012", [2006, 2012, 1995]) == pytest.approx(2 / 3)


def test_gold_answers_from_rows() -> None:
    assert gold_answers({"id": "1", "answers": ["Paris", "paris", "Paris", ""]}) == ["Paris", "paris"]
    assert gold_answers({"id": "2", "golden_answers": ["Rome"]}) == ["Rome"]
    assert gold_answers({"id": "3", "answer": "Oslo"}) == ["Oslo"]
    assert gold_answers({"id": "4", "answers": [1755]}) == ["1755"]
    with pytest.raises(ValueError, match="'5'"):
        gold_answers({"id": "5", "answers": []})


def _rows(name: str) -> list[dict[str, object]]:
    return list(read_jsonl(dataset_path(name)))


def test_real_rows_score_their_own_gold() -> None:
    """Every gold answer of every real dev row scores 1 against itself (normalization is stable)."""
    for name in ("hotpotqa", "nq", "fanoutqa", "bamboogle"):
        for row in _rows(name):
            golds = gold_answers(row)
            assert golds, row["id"]
            if not normalize_answer(golds[0]):
                continue  # e.g. NQ's gold "---": nothing to contain or recall
            for metric in METRICS:
                assert best_match(golds[0], golds, metric).score == 1.0, (name, row["id"], metric)


def test_real_fanoutqa_answer_raw() -> None:
    """FanOutQA's joined `answers` string contains every key and value of `answer_raw`."""
    rows = _rows("fanoutqa")
    kinds = {type(r["answer_raw"]).__name__ for r in rows}
    assert {"dict", "list", "str"} <= kinds
    for row in rows:
        parts = flatten_answer_raw(row["answer_raw"], include_keys=True)
        assert parts, row["id"]
        if "yes" in parts or "no" in parts:
            continue  # the joined string renders booleans as "False"; FanOutQA's scorer uses "no"
        joined = gold_answers(row)[0]
        assert answer_raw_recall(joined, row["answer_raw"], include_keys=True) == 1.0, row["id"]
        assert answer_raw_recall("", row["answer_raw"]) == 0.0
