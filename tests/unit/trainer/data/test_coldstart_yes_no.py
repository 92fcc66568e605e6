"""Yes/no questions in the scripted cold start: kept only when the compared passages were read."""

from __future__ import annotations

import json
from typing import Any

from services.trainer.data.coldstart import _yes_no_answer, qa_trajectory
from shared.config import corpus_path
from shared.data import load_split, open_text
from shared.schemas import Document, Hit


def yes_no_row() -> dict[str, Any]:
    return next(r for r in load_split("hotpotqa", "train")
                if r["answers"][0].lower() in ("yes", "no") and len(r.get("supporting_passage_ids", [])) == 2)


def hits_for(ids: list[str]) -> list[Hit]:
    found: dict[str, Hit] = {}
    with open_text(corpus_path()) as f:
        for line in f:
            p = json.loads(line)
            if p["id"] in ids:
                found[p["id"]] = Hit(document=Document(id=p["id"], contents=f'"{p["title"]}"\n{p["text"]}'), score=1.0)
    return [found[i] for i in ids]


def test_a_yes_no_question_is_kept_only_when_every_supporting_passage_was_retrieved() -> None:
    row = yes_no_row()
    first, second = (str(x) for x in row["supporting_passage_ids"])
    both = [(row["question"], hits_for([first])), (row["supporting_titles"][1], hits_for([second]))]
    answer = _yes_no_answer(row, both)
    assert answer == row["answers"][0].lower()
    assert _yes_no_answer(row, both[:1]) is None  # one side of the comparison was never read
    assert _yes_no_answer({**row, "answers": ["Paris"]}, both) is None  # not a yes/no question

    record = qa_trajectory({**row, "source": "hotpotqa"}, both, answer)
    final = record.segments[-1].text
    assert final.endswith(f"<answer> {answer} </answer>")
    assert all(title in final for title in row["supporting_titles"])  # the thought names what it compared
    assert [s.role for s in record.segments] == ["policy", "observation"] * 2 + ["policy"]
