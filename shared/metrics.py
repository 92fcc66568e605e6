"""Answer metrics: the one definition of "correct" for evaluation, the judge's rule methods and RL rewards.

Normalization is SQuAD's / FlashRAG's / Search-R1's: lowercase, drop ASCII punctuation
(``string.punctuation``), drop the articles a/an/the, collapse whitespace. Every metric below compares
*normalized* strings, and each says how it sits beside the field's code (Search-R1
``verl/utils/reward_score/qa_em.py``, FlashRAG ``flashrag/evaluator/metrics.py``, HotpotQA
``hotpot_evaluate_v1.py``), so a column can be set beside a paper's table:

- ``exact_match``  (``em``) normalized prediction == normalized gold. The same as Search-R1's
                   ``em_check``, FlashRAG's ``em`` and HotpotQA's EM.
- ``substring_acc`` (``acc``) normalized gold is a substring of the normalized prediction: the field's
                   "accuracy", Search-R1's ``subem_check`` and FlashRAG's ``Sub_ExactMatch`` (``acc``), so
                   gold "Paris" matches "Parisian". One deviation: a gold that normalizes to nothing ("The")
                   never matches (the references count "" as contained in everything).
- ``cover_em``     ours, stricter than ``acc``: the normalized gold occurs in the normalized prediction on
                   *whole-token* boundaries, so gold "art" does not match "martial arts" nor "Paris"
                   "Parisian". Unicode punctuation (curly quotes, "…", "—", "«»", …) counts as a boundary,
                   so gold "Hello" is covered by "“Hello”" although ASCII-only normalization keeps the
                   quotes. On ASCII text ``cover_em <= acc``.
- ``f1_score``     (``f1``) token-level F1 over token multisets, HotpotQA's / FlashRAG's: when either side
                   normalizes to one of yes / no / noanswer and the two differ, F1 is 0; no common token
                   (both sides empty included) is 0.
- ``token_recall`` (``recall``) |gold ∩ pred| / |gold| over token multisets: MaskSearch's recall reward
                   with FlashRAG's / HotpotQA's rules (the yes / no / noanswer rule, 0 without a common
                   token), i.e. FlashRAG's ``recall``.

Several gold answers: ``best_match(prediction, golds, metric)`` returns the maximum score and the gold
that reached it. FanOutQA rows carry a structured ``answer_raw`` (dict / list / str / number / bool):
``flatten_answer_raw`` turns it into gold strings and ``answer_raw_recall`` scores a prediction
against all of them (FanOutQA's "loose accuracy" when keys are included).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "METRICS",
    "METRIC_DEFINITIONS",
    "MatchResult",
    "MetricFn",
    "answer_raw_recall",
    "best_match",
    "cover_em",
    "exact_match",
    "f1_score",
    "flatten_answer_raw",
    "get_metric",
    "gold_answers",
    "keep_threshold",
    "normalize_answer",
    "score_answer",
    "substring_acc",
    "token_recall",
    "tokens",
]

MetricFn = Callable[[str, str], float]
"""A metric scores one prediction against one gold string, in [0, 1]."""

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPECIAL = frozenset({"yes", "no", "noanswer"})


# --------------------------------------------------------------------------- normalization


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, remove punctuation, remove articles, collapse whitespace.

    >>> normalize_answer("The  Eiffel-Tower!")
    'eiffeltower'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    """The normalized tokens of ``text``."""
    return normalize_answer(text).split()


# --------------------------------------------------------------------------- single-gold metrics


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def substring_acc(prediction: str, gold: str) -> float:
    """1.0 when the normalized gold is a substring of the normalized prediction (Search-R1 ``subem``,
    FlashRAG ``acc``): gold "Paris" matches "Parisian". An empty normalized gold never matches."""
    norm_gold = normalize_answer(gold)
    return float(bool(norm_gold) and norm_gold in normalize_answer(prediction))


def _boundary_tokens(normalized: str) -> str:
    """``normalized`` with every Unicode punctuation character (category P*) turned into a space, the
    whitespace collapsed: the token boundaries ``cover_em`` matches on."""
    spaced = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in normalized)
    return " ".join(spaced.split())


def cover_em(prediction: str, gold: str) -> float:
    """1.0 when the normalized gold occurs in the normalized prediction on whole-token boundaries.

    Stricter than the field's substring ``acc`` (:func:`substring_acc`): gold "Paris" does not match
    "Parisian". Unicode punctuation is a boundary on both sides, so "“Hello”" covers gold "Hello" and "Paris…"
    covers "Paris". An empty normalized gold never matches (it would be "contained" in everything).
    """
    norm_gold = _boundary_tokens(normalize_answer(gold))
    if not norm_gold:
        return 0.0
    return float(f" {norm_gold} " in f" {_boundary_tokens(normalize_answer(prediction))} ")


def _overlap(pred_tokens: list[str], gold_tokens: list[str]) -> int:
    return sum((Counter(pred_tokens) & Counter(gold_tokens)).values())


def _precision_recall(prediction: str, gold: str) -> tuple[float, float]:
    """Token precision and recall with HotpotQA's / FlashRAG's rules: (0, 0) when either normalized side
    is one of yes / no / noanswer and the two differ, or when no token is shared (both sides empty too)."""
    norm_pred, norm_gold = normalize_answer(prediction), normalize_answer(gold)
    if (norm_pred in _SPECIAL or norm_gold in _SPECIAL) and norm_pred != norm_gold:
        return 0.0, 0.0
    pred_tokens, gold_tokens = norm_pred.split(), norm_gold.split()
    common = _overlap(pred_tokens, gold_tokens)
    if common == 0:
        return 0.0, 0.0
    return common / len(pred_tokens), common / len(gold_tokens)


def f1_score(prediction: str, gold: str) -> float:
    """Token-level F1 over token multisets, HotpotQA's / FlashRAG's ``f1`` (rules in
    :func:`_precision_recall`: a yes / no / noanswer mismatch and two empty sides score 0)."""
    precision, recall = _precision_recall(prediction, gold)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def token_recall(prediction: str, gold: str) -> float:
    """|gold ∩ pred| / |gold| over token multisets (MaskSearch's recall reward), with FlashRAG's ``recall``
    rules: pred "yes or no" against gold "no" is 0, not 1; an empty gold is 0."""
    return _precision_recall(prediction, gold)[1]


METRICS: dict[str, MetricFn] = {
    "em": exact_match,
    "acc": substring_acc,
    "cover_em": cover_em,
    "f1": f1_score,
    "recall": token_recall,
}
"""Registry of rule metrics by name (the judge's rule methods use the same names)."""

METRIC_DEFINITIONS: dict[str, str] = {
    "em": "EM: normalized exact match (= Search-R1 em, FlashRAG em)",
    "acc": "acc: normalized gold is a substring of the answer (= Search-R1 subem, FlashRAG acc)",
    "cover_em": "cover-EM: normalized gold in the answer on whole-token boundaries (ours; stricter than acc)",
    "f1": "F1: token F1 with HotpotQA's yes/no rule (= FlashRAG f1, HotpotQA f1)",
    "recall": "recall: token recall with the yes/no rule (= FlashRAG recall)",
}
"""One line per metric saying which definition it is, for report and table headers."""


def get_metric(name: str) -> MetricFn:
    """The metric registered as ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(sorted(METRICS))}") from None


# --------------------------------------------------------------------------- several gold answers


@dataclass(frozen=True)
class MatchResult:
    """The best score of a prediction over several gold answers, and the gold that reached it."""

    score: float
    gold: str | None  # None when there was no gold answer at all


def best_match(prediction: str, golds: Iterable[str], metric: str | MetricFn = "em") -> MatchResult:
    """Maximum of ``metric(prediction, gold)`` over ``golds``; ties keep the first gold.

    No gold answers gives ``MatchResult(0.0, None)``.
    """
    fn = get_metric(metric) if isinstance(metric, str) else metric
    best = MatchResult(0.0, None)
    for gold in golds:
        score = fn(prediction, gold)
        if best.gold is None or score > best.score:
            best = MatchResult(score, gold)
    return best


def score_answer(prediction: str, golds: Iterable[str] | str, metric: str | MetricFn = "em") -> float:
    """Shorthand for ``best_match(...).score``; a single gold string is accepted too."""
    return best_match(prediction, [golds] if isinstance(golds, str) else golds, metric).score


def keep_threshold(min_score: float | None, llm_judge: bool) -> float:
    """The score an answer must reach to be kept as training data (distillation, the agents' cold start):
    ``min_score`` when set, else 0.5 for the LLM judge (its verdicts score 1 or 0) and 1.0 for a rule metric."""
    if min_score is not None:
        return min_score
    return 0.5 if llm_judge else 1.0


# --------------------------------------------------------------------------- QA rows and FanOutQA answers


def _primitive_str(value: Any) -> str:
    """FanOutQA's rendering of a primitive answer: bools become yes/no, everything else ``str()``.

    Floats keep Python's rendering ("37.0"), as FanOutQA's scorer and the rows' joined ``answers`` do.
    """
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def flatten_answer_raw(raw: Any, include_keys: bool = False) -> list[str]:
    """Flatten a FanOutQA ``answer_raw`` into gold strings, in order.

    dict -> its values (and its keys first, per item, when ``include_keys``), list -> its items,
    anything else -> one string (bool -> "yes"/"no", else ``str()``). Nested values are
    flattened recursively; ``None`` contributes nothing.

    >>> flatten_answer_raw({"Avatar": "James Cameron", "Titanic": True}, include_keys=True)
    ['Avatar', 'James Cameron', 'Titanic', 'yes']
    """
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        out: list[str] = []
        for key, value in raw.items():
            if include_keys:
                out.append(_primitive_str(key))
            out.extend(flatten_answer_raw(value, include_keys))
        return out
    if isinstance(raw, list | tuple):
        return [s for item in raw for s in flatten_answer_raw(item, include_keys)]
    return [_primitive_str(raw)]


def answer_raw_recall(prediction: str, raw: Any, include_keys: bool = False) -> float:
    """Fraction of the flattened gold parts of ``raw`` found in ``prediction`` (``cover_em`` per part).

    With ``include_keys=True`` this is FanOutQA's "loose accuracy" (keys and values of a dict answer
    must all appear), with SQuAD normalization instead of FanOutQA's spaCy lemmatization. Without
    keys it is recall over the values only. A raw answer with no parts scores 0.0.
    """
    parts = flatten_answer_raw(raw, include_keys)
    if not parts:
        return 0.0
    return sum(cover_em(prediction, part) for part in parts) / len(parts)


def gold_answers(row: Mapping[str, Any]) -> list[str]:
    """The gold answer strings of a QA row, de-duplicated in order.

    Reads ``answers`` (our schema), else ``golden_answers`` (FlashRAG), else ``answer``; a single
    value is wrapped in a list and non-strings are rendered like FanOutQA primitives. Empty strings
    are dropped. A row without any gold answer raises ``ValueError`` naming the row id.
    """
    for key in ("answers", "golden_answers", "answer"):
        if key in row and row[key] is not None:
            value = row[key]
            items = value if isinstance(value, list | tuple) else [value]
            golds = [_primitive_str(v).strip() for v in items]
            unique = list(dict.fromkeys(g for g in golds if g))
            if unique:
                return unique
    raise ValueError(f"row {row.get('id', '?')!r} has no gold answers (looked for answers/golden_answers/answer)")
