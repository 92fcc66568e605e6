"""Reading documents out of the free text small LLMs write, and filling short lists."""

from __future__ import annotations

import pytest

from shared.simulation.documents import (
    Doc,
    fill_documents,
    format_target,
    parse_documents,
    sentence_chunks,
    window_around,
)


def test_canonical_format_round_trips() -> None:
    docs = [Doc("Paris", "Paris is the capital and largest city of France."),
            Doc("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris.")]
    parsed = parse_documents(format_target(docs), words=30)
    assert [(d.title, d.text) for d in parsed] == [(d.title, d.text) for d in docs]


@pytest.mark.parametrize("text", [
    "1. Paris is the capital of France.\n2) Lyon is the third city of France.\n[3] Marseille is a port city.",
    "Doc 1: Paris is the capital of France. Doc 2: Lyon is the third city of France. "
    "Document 3 - Marseille is a port city.",
    "Title: Paris\nParis is the capital of France.\n\nTitle: Lyon\nLyon is the third city of France.\n\n"
    "Title: Marseille\nMarseille is a port city.",
    "- **Doc 1** (Title: Paris) Paris is the capital of France.\n- **Doc 2** (Title: Lyon) Lyon is the third "
    "city of France.\n- **Doc 3** (Title: Marseille) Marseille is a port city.",
])
def test_layouts_small_models_write(text: str) -> None:
    docs = parse_documents(text, words=30)
    assert len(docs) == 3
    assert [d.text.split()[0] for d in docs] == ["Paris", "Lyon", "Marseille"]
    assert all(d.title and d.text for d in docs)


def test_preamble_and_prompt_echo_are_not_documents() -> None:
    text = ("Here are three documents:\nDoc 1 (Title: A) Alpha beta gamma delta.\nQuery: who is alpha\n"
            "Doc 2 (Title: B) Beta gamma delta epsilon.")
    docs = parse_documents(text, words=30)
    assert [d.title for d in docs] == ["A", "B"]
    assert all("Query" not in d.text for d in docs)


def test_run_on_paragraph_is_cut_into_sentence_chunks() -> None:
    text = " ".join(f"Sentence number {i} says something about the query here." for i in range(6))
    docs = parse_documents(text, words=16)
    assert len(docs) == 3
    assert all(d.text.endswith(".") for d in docs)


def test_fragments_duplicates_and_long_documents() -> None:
    text = "Doc 1 (Title: A) Too short\nDoc 2 (Title: B) " + "word " * 100 + "\nDoc 3 (Title: C) " + "word " * 100
    docs = parse_documents(text, words=10, max_words=20)
    assert len(docs) == 1  # fragment dropped, duplicate dropped
    assert len(docs[0].text.split()) == 20


def test_untitled_document_gets_a_title_from_its_text() -> None:
    [doc] = parse_documents("The Moscow State University was founded in 1755 by Lomonosov.", words=30)
    assert doc.title == "The Moscow State University was founded"


def test_fill_splits_long_documents_then_labels_what_is_missing() -> None:
    long_doc = Doc("A", "First sentence has five words. Second sentence has five words. Third one here too.")
    docs, added = fill_documents([long_doc], 2, "q", words=6)
    assert len(docs) == 2 and added == 1
    assert docs[0].title == docs[1].title == "A"
    assert " ".join(d.text for d in docs) == long_doc.text

    docs, added = fill_documents([], 3, "who wrote hamlet", words=30)
    assert len(docs) == 3 and added == 3
    assert all("who wrote hamlet" in d.text for d in docs)


def test_fill_never_returns_more_than_k() -> None:
    docs, added = fill_documents([Doc("A", "a b c d")] * 5, 3, "q", words=30)
    assert len(docs) == 3 and added == 0


def test_window_keeps_the_answer() -> None:
    text = " ".join(f"w{i}" for i in range(200)) + " Moscow State University " + " ".join(f"v{i}" for i in range(200))
    window = window_around(text, 30, ["moscow state university"])
    assert "Moscow State University" in window and len(window.split()) == 30
    assert window_around(text, 30, ["absent"]).split()[0] == "w0"
    assert window_around("short text", 30, ["x"]) == "short text"


def test_sentence_chunks_keep_all_text() -> None:
    text = "One two. Three four five. Six."
    assert " ".join(sentence_chunks(text, 2)) == text


def test_lead_in_lines_are_not_documents() -> None:
    docs = parse_documents("The document is:\n\nKen Pruitt was a Republican member of the Florida Senate.", words=30)
    assert [d.text for d in docs] == ["Ken Pruitt was a Republican member of the Florida Senate."]
