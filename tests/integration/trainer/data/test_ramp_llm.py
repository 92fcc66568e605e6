"""The ``llm`` span selector end to end through ``shared.llm`` with the real embedded SmolLM2."""

from __future__ import annotations

import pytest

from services.trainer.data.lexicon import Lexicon
from services.trainer.data.spans import LLMSelector, parse_span_list
from shared.config import LLMSettings
from shared.data import Passage

PASSAGE = Passage("p", "Deliver Us from Evil (2014 film)",
                  "Deliver Us from Evil is a 2014 American supernatural horror film directed by Scott Derrickson "
                  "and produced by Jerry Bruckheimer. It stars Eric Bana and Olivia Munn, and was released in the "
                  "United States on July 2, 2014.")


@pytest.mark.slow
def test_llm_selector_keeps_only_verbatim_spans_of_the_reply() -> None:
    selector = LLMSelector(Lexicon.build([PASSAGE]), LLMSettings(backend="local", model="smollm2"),
                           max_new_tokens=24)
    reply = selector.backend.chat([selector.prompt(PASSAGE)], selector.sampling)[0]
    parsed = parse_span_list(reply)
    assert parsed, reply  # the reply parses into span strings
    kept = selector.spans_from_reply(PASSAGE, reply)
    assert {s.text for s in kept} <= {p for p in parsed if p in PASSAGE.text}
    for s in kept:
        assert PASSAGE.text[s.start:s.end] == s.text and s.start > 0
