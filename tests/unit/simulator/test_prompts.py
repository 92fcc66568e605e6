"""The ZeroSearch prompt templates: counts and words are parameters; the gold answer only in useful."""

from __future__ import annotations

import pytest

from shared.simulation.prompts import get_template, number_word, render


def test_useful_prompt_is_zerosearch_with_the_answer_injected() -> None:
    [msg] = render("zerosearch", "useful", "tokarev university", 5, 30,
                   question="Where did Tokarev teach?", gold=["Moscow State University", "MSU"])
    text = msg["content"]
    assert text.startswith("You are the Google search engine. Given a query, you need to generate five useful "
                           "documents for the query.")
    assert "The user is trying to answer the question: 'Where did Tokarev teach?' whose answer is " \
           "Moscow State University." in text
    assert "about 30 words" in text and "useful information" in text
    assert text.endswith("Query: tokarev university\nUseful Output:")


def test_noisy_prompt_never_leaks_the_answer() -> None:
    [msg] = render("zerosearch", "noisy", "tokarev university", 3, 20, question="Where did Tokarev teach?",
                   gold=["Moscow State University"])
    text = msg["content"]
    assert "three noisy documents" in text and "noisy information" in text and "about 20 words" in text
    assert "Moscow State University" not in text
    assert text.endswith("Noisy Output:")


def test_counts_are_parameters() -> None:
    assert "one useful document for" in render("zerosearch", "useful", "q", 1, 30)[0]["content"]
    assert "12 useful documents" in render("zerosearch", "useful", "q", 12, 30)[0]["content"]
    assert number_word(5) == "five" and number_word(11) == "11"


def test_unknown_template_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="zerosearch"):
        get_template("nope", "useful")
