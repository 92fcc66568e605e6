"""Perplexity-based span difficulty with the real embedded SmolLM2 (CPU)."""

from __future__ import annotations

import random

import pytest

from services.trainer.data.difficulty import SpanScorer, span_context
from services.trainer.data.masking import choose_spans
from services.trainer.data.spans import Span
from shared.data import Passage

TEXT = ("The capital of France is Paris. The Eiffel Tower stands in Paris, the capital of France, and was "
        "designed by Zyglotron Vexmarrow in 1889.")


def span(text: str, nth: int = 0) -> Span:
    at = -1
    for _ in range(nth + 1):
        at = TEXT.index(text, at + 1)
    return Span(text, at, at + len(text), "entity")


def test_span_context_masks_only_that_span() -> None:
    ctx = span_context(TEXT, span("Paris", 1), before=30, after=20)
    assert ctx.count("[mask]") == 1 and ctx.startswith("... ") and ctx.endswith(" ...")
    assert "stands in [mask], the" in ctx


@pytest.mark.slow
def test_scorer_finds_recoverable_spans_easier_and_batches_exactly() -> None:
    scorer = SpanScorer()
    spans = [span("Paris", 1), span("Zyglotron Vexmarrow"), span("France", 1)]
    passage = Passage("x", "Eiffel Tower", TEXT)
    batched = scorer.score([(passage, spans)])[0]
    alone = [scorer.score([(passage, [s])])[0][0] for s in spans]
    assert batched == pytest.approx(alone, abs=1e-3)  # left padding does not change a sequence's loss
    paris, invented, _ = batched
    assert paris < invented  # the context says Paris; nothing says the invented name
    chosen = choose_spans(spans, 1, "ppl", random.Random(0), TEXT, batched)
    assert chosen is not None and chosen[0].text == "Zyglotron Vexmarrow"
