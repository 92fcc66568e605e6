"""One mapping between the project's rows and the formats other tools read and write.

Every conversion in the project (``searchlab data import|export``, the verl engine's parquet) goes
through these functions; they are pure (no I/O) and raise :class:`FormatError` naming the field.

The project's rows (``data/SOURCES.md``)::

    QA       {"id": str, "question": str, "answers": [str, ...], "source": str, ...extra fields}
    corpus   {"id": str, "title": str, "text": str}

FlashRAG (``RUC-NLPIR/FlashRAG_datasets``, its corpora such as wiki-18)::

    QA       {"id", "question", "golden_answers": [...], "metadata": {...}}    answers <-> golden_answers
    corpus   {"id", "contents": "\\"Title\\"\\ntext"}                            title/text <-> contents

verl / Search-R1 RL parquet (``scripts/data_process/nq_search.py``; verl's ``RLHFDataset``)::

    data_source    str                                   <-> source
    prompt         [{"role": "user", "content": <template with the question>}]
    ability        "fact-reasoning"
    reward_model   {"style": "rule", "ground_truth": {"target": [answers]}}   <-> answers
    extra_info     {"split", "index", "id", "question", "need_tools_kwargs",  <-> id, question
                    "tools_kwargs": {"search": {"create_kwargs": {"ground_truth", "question", "data_source"}}}}

Search-R1's own files keep the FlashRAG columns too (``id``, ``question``, ``golden_answers``:
``datasets.map`` adds columns, it does not drop them) and have no ``extra_info.question``; the
question is then the ``question`` column or, failing that, the text after ``Question:`` in the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.data import Passage, passage_from_row
from shared.protocol import get_template

VERL_ABILITY = "fact-reasoning"


class FormatError(ValueError):
    """A row that does not fit its format; ``field`` names the culprit (the importer adds file:row)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field '{field}': {message}")
        self.field = field


# --------------------------------------------------------------------------- the project's QA row


def _type_name(value: Any) -> str:
    return type(value).__name__


def _text(value: Any, field: str, numbers: bool = True) -> str:
    """A non-empty stripped string; ``numbers``: ints and floats count as their text (ids, answers like 1755)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float) or (not numbers and not isinstance(value, str)):
        raise FormatError(field, f"expected a string, got {_type_name(value)}")
    text = str(value).strip()
    if not text:
        raise FormatError(field, "is empty")
    return text


def answer_list(value: Any, field: str) -> list[str]:
    """A non-empty list of answer strings (numbers become strings; one string becomes a list of one)."""
    if hasattr(value, "tolist"):  # numpy arrays (pandas reads parquet lists as arrays)
        value = value.tolist()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise FormatError(field, f"expected a list of strings, got {_type_name(value)}")
    answers = [_text(a, f"{field}[{i}]") for i, a in enumerate(value)]
    if not answers:
        raise FormatError(field, "has no answers")
    return answers


def qa_row(row: Mapping[str, Any], source: str, default_id: str | None = None) -> dict[str, Any]:
    """A checked QA row of the project's schema: ``id`` and ``question`` non-empty strings, ``answers``
    a non-empty list of strings; ``id`` (when missing) and ``source`` (when empty) filled in; other
    fields kept."""
    if row.get("id") is None and default_id is not None:
        row = {**row, "id": default_id}
    for field in ("id", "question", "answers"):
        if field not in row or row[field] is None:
            raise FormatError(field, "is missing")
    out = dict(row)
    out["id"] = _text(row["id"], "id")
    out["question"] = _text(row["question"], "question", numbers=False)
    out["answers"] = answer_list(row["answers"], "answers")
    out["source"] = _text(row.get("source") or source, "source")
    return out


# --------------------------------------------------------------------------- FlashRAG


def flashrag_to_qa(row: Mapping[str, Any], source: str, default_id: str | None = None) -> dict[str, Any]:
    """FlashRAG ``{id, question, golden_answers, metadata?}`` -> a QA row."""
    if "golden_answers" not in row:
        raise FormatError("golden_answers", "is missing")
    out = {k: v for k, v in row.items() if k != "golden_answers"}
    out["answers"] = answer_list(row["golden_answers"], "golden_answers")
    return qa_row(out, source, default_id)


def qa_to_flashrag(row: Mapping[str, Any]) -> dict[str, Any]:
    """A QA row -> FlashRAG ``{id, question, golden_answers, metadata}`` (other fields go to metadata)."""
    metadata = dict(row.get("metadata") or {})
    metadata.update({k: v for k, v in row.items() if k not in ("id", "question", "answers", "metadata")})
    return {"id": str(row["id"]), "question": str(row["question"]), "golden_answers": [str(a) for a in row["answers"]],
            "metadata": metadata}


def passage_row(row: Any) -> Passage:
    """``{id, title, text}`` or FlashRAG ``{id, contents}`` -> a checked :class:`Passage`."""
    if not isinstance(row, Mapping):
        raise FormatError("row", f"expected an object, got {_type_name(row)}")
    if "id" not in row or row["id"] is None:
        raise FormatError("id", "is missing")
    _text(row["id"], "id")
    for field in ("text", "contents", "title"):
        if row.get(field) is not None and not isinstance(row[field], str):
            raise FormatError(field, f"expected a string, got {_type_name(row[field])}")
    try:
        passage = passage_from_row(dict(row))
    except ValueError as exc:
        raise FormatError("text", "missing: a corpus row needs 'text' (and 'title') or FlashRAG 'contents'") from exc
    if not passage.text:
        raise FormatError("text" if "text" in row else "contents", "is empty")
    return passage


def passage_to_flashrag(passage: Passage) -> dict[str, str]:
    return {"id": passage.id, "contents": passage.contents}


# --------------------------------------------------------------------------- verl / Search-R1 parquet


def qa_to_verl(row: Mapping[str, Any], index: int, split: str, template: str = "search_r1") -> dict[str, Any]:
    """One QA row as a verl RL parquet row (Search-R1's columns) with the search tool's kwargs."""
    question = str(row["question"])
    answers = [str(a) for a in row["answers"]]
    source = str(row.get("source", "qa"))
    return {
        "data_source": source,
        "prompt": get_template(template).build_messages(question),
        "ability": VERL_ABILITY,
        "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
        "extra_info": {
            "split": split, "index": index, "id": str(row.get("id", index)), "question": question,
            "need_tools_kwargs": True,
            "tools_kwargs": {"search": {"create_kwargs": {"ground_truth": {"target": answers},
                                                          "question": question, "data_source": source}}},
        },
    }


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FormatError(field, f"expected an object, got {_type_name(value)}")
    return value


def question_from_prompt(prompt: Any) -> str:
    """The question of a Search-R1-template prompt: the text after the last ``Question:``."""
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if isinstance(prompt, str):
        content = prompt
    elif isinstance(prompt, list | tuple) and prompt and all(isinstance(m, Mapping) for m in prompt):
        users = [m for m in prompt if m.get("role") == "user"]
        content = str((users or list(prompt))[-1].get("content", ""))
    else:
        raise FormatError("prompt", f"expected a list of chat messages, got {_type_name(prompt)}")
    question = content.rsplit("Question:", 1)[1].strip() if "Question:" in content else ""
    if not question:
        raise FormatError("prompt", "has no 'Question: ...' and the row has no 'question' or 'extra_info.question'")
    return question


def verl_to_qa(row: Mapping[str, Any], source: str, default_id: str | None = None) -> dict[str, Any]:
    """A verl / Search-R1 parquet row -> a QA row (the inverse of :func:`qa_to_verl`). The id is the
    ``id`` column, else ``extra_info.id``, else ``<extra_info.split>_<extra_info.index>``, else ``default_id``."""
    extra = _mapping(row.get("extra_info"), "extra_info")
    reward = _mapping(row.get("reward_model"), "reward_model")
    truth = _mapping(reward.get("ground_truth"), "reward_model.ground_truth")
    if "target" not in truth:
        raise FormatError("reward_model.ground_truth.target", "is missing")
    if extra.get("question") is not None:
        question = extra["question"]
    elif row.get("question") is not None:
        question = row["question"]
    elif row.get("prompt") is not None:
        question = question_from_prompt(row["prompt"])
    else:
        raise FormatError("prompt", "is missing (and the row has no 'question' or 'extra_info.question')")
    if row.get("id") is not None:
        qid = row["id"]
    elif extra.get("id") is not None:
        qid = extra["id"]
    elif extra.get("index") is not None:
        qid = f"{extra.get('split') or 'row'}_{extra['index']}"
    elif default_id is not None:
        qid = default_id
    else:
        raise FormatError("id", "is missing (no 'id', 'extra_info.id' or 'extra_info.index')")
    answers = answer_list(truth["target"], "reward_model.ground_truth.target")
    out = {"id": qid, "question": question, "answers": answers}
    if row.get("data_source"):
        out["source"] = row["data_source"]
    return qa_row(out, source)
