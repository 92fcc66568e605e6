"""The one field mapping between the project's rows and FlashRAG / verl / Search-R1 rows."""

from __future__ import annotations

from typing import Any

import pytest

from shared.data import Passage, load_split
from shared.formats import (
    FormatError,
    flashrag_to_qa,
    passage_row,
    passage_to_flashrag,
    qa_row,
    qa_to_flashrag,
    qa_to_verl,
    verl_to_qa,
)
from shared.protocol import get_template


def _core(row: dict[str, Any]) -> tuple[str, str, list[str], str]:
    return row["id"], row["question"], row["answers"], row["source"]


def test_verl_rows_map_back_to_the_qa_rows_they_came_from() -> None:
    rows = load_split("musique", "all", 20)
    for i, row in enumerate(rows):
        verl = qa_to_verl(row, i, "train")
        assert verl["reward_model"]["ground_truth"]["target"] == row["answers"]
        assert _core(verl_to_qa(verl, "elsewhere")) == _core(row)


def test_verl_engine_uses_the_shared_mapping() -> None:
    from services.trainer.verl.run import qa_to_verl_row

    row = load_split("nq", "all", 1)[0]
    assert qa_to_verl_row(row, 3, "eval") == qa_to_verl(row, 3, "eval")


def test_a_search_r1_row_as_nq_search_py_writes_it() -> None:
    """Search-R1's parquet: the FlashRAG columns kept, the prompt wrapped in its template, no extra_info.question."""
    prompt = get_template("search_r1").build_prompt("who wrote hamlet")
    row = {"id": "test_7", "question": "who wrote hamlet?", "golden_answers": ["Shakespeare"], "data_source": "nq",
           "prompt": [{"role": "user", "content": prompt}], "ability": "fact-reasoning",
           "reward_model": {"style": "rule", "ground_truth": {"target": ["Shakespeare"]}},
           "extra_info": {"split": "test", "index": 7}}
    assert _core(verl_to_qa(row, "mine")) == ("test_7", "who wrote hamlet?", ["Shakespeare"], "nq")
    bare = {k: v for k, v in row.items() if k not in ("id", "question", "golden_answers")}
    assert _core(verl_to_qa(bare, "mine")) == ("test_7", "who wrote hamlet?", ["Shakespeare"], "nq")


def test_flashrag_rows_round_trip() -> None:
    row = {"id": "test_1", "question": "q?", "golden_answers": ["a", 1755], "metadata": {"type": "x"}}
    qa = flashrag_to_qa(row, "mine")
    assert _core(qa) == ("test_1", "q?", ["a", "1755"], "mine")
    assert qa_to_flashrag(qa) == {"id": "test_1", "question": "q?", "golden_answers": ["a", "1755"],
                                  "metadata": {"type": "x", "source": "mine"}}
    passage = passage_row({"id": 3, "contents": '"Moscow State University"\nFounded in 1755.'})
    assert passage == Passage("3", "Moscow State University", "Founded in 1755.")
    assert passage_row(passage_to_flashrag(passage)) == passage


@pytest.mark.parametrize(("row", "field", "message"), [
    ({"id": "1", "question": "q"}, "golden_answers", "missing"),
    ({"id": "1", "question": ["q"], "golden_answers": ["a"]}, "question", "expected a string, got list"),
    ({"id": "1", "question": "q", "golden_answers": {"a": 1}}, "golden_answers", "expected a list of strings"),
    ({"id": "1", "question": "q", "golden_answers": []}, "golden_answers", "has no answers"),
    ({"id": "1", "question": "  ", "golden_answers": ["a"]}, "question", "is empty"),
    ({"id": "1", "question": "q", "golden_answers": ["a", None]}, "golden_answers[1]", "expected a string, got NoneType"),
])
def test_bad_flashrag_rows_name_the_field(row: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(FormatError, match=message) as err:
        flashrag_to_qa(row, "mine")
    assert err.value.field == field


def test_bad_verl_rows_name_the_field() -> None:
    with pytest.raises(FormatError, match="reward_model.ground_truth.target"):
        verl_to_qa({"id": "1", "question": "q", "reward_model": {"ground_truth": {}}}, "x")
    with pytest.raises(FormatError, match="field 'prompt'"):
        verl_to_qa({"id": "1", "prompt": [{"role": "user", "content": "no marker"}],
                    "reward_model": {"ground_truth": {"target": ["a"]}}}, "x")
    with pytest.raises(FormatError, match="field 'extra_info': expected an object"):
        verl_to_qa({"extra_info": "oops", "reward_model": {"ground_truth": {"target": ["a"]}}}, "x")


def test_qa_rows_get_an_id_only_when_they_have_none() -> None:
    assert qa_row({"question": "q", "answers": ["a"]}, "s", "s-4")["id"] == "s-4"
    assert qa_row({"id": 9, "question": "q", "answers": ["a"]}, "s", "s-4")["id"] == "9"
    with pytest.raises(FormatError, match="field 'id'"):
        qa_row({"question": "q", "answers": ["a"]}, "s")
