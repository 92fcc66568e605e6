"""The one train/eval split rule and the one corpus reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.data import (
    DATASETS,
    Passage,
    available_datasets,
    dataset_path,
    iter_passages,
    load_questions,
    load_split,
    passage_from_row,
    read_jsonl,
    split_of,
    write_jsonl,
)


@pytest.mark.parametrize("name", DATASETS)
def test_split_is_a_partition_of_each_dev_set(name: str) -> None:
    train, evaluation, everything = (load_split(name, p) for p in ("train", "eval", "all"))
    train_ids, eval_ids = {r["id"] for r in train}, {r["id"] for r in evaluation}
    assert not train_ids & eval_ids
    assert train_ids | eval_ids == {r["id"] for r in everything}
    assert 0.3 < len(evaluation) / len(everything) < 0.7  # about half held for evaluation
    assert not {r["question"] for r in train} & {r["question"] for r in evaluation}


def test_split_is_deterministic_and_depends_on_dataset_and_id() -> None:
    assert split_of("hotpotqa", "5ae143ed55429920d5234360") == split_of("hotpotqa", "5ae143ed55429920d5234360")
    assert split_of("2wiki", "x") == split_of("2wikimultihopqa", "x")  # alias, same rule
    parts = {split_of("hotpotqa", str(i)) for i in range(50)}
    assert parts == {"train", "eval"}


def test_hotpotqa_eval_part_is_large_enough_to_report_on() -> None:
    assert len(load_split("hotpotqa", "eval")) >= 200


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="hotpotqa"):
        load_split("nope")


def test_a_jsonl_path_is_taken_whole(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"question": "q?", "answers": ["a"]}) + "\n\n")
    [row] = load_questions(str(path))
    assert row["id"] == "mine-1" and row["source"] == "mine"
    path.write_text(json.dumps({"question": "q?"}) + "\n")
    with pytest.raises(ValueError, match="answers"):
        load_questions(str(path))


def test_bad_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        list(read_jsonl(path))


def test_passage_formats() -> None:
    assert passage_from_row({"id": "a", "title": "&quot;Q&quot;", "text": " t "}) == Passage("a", '"Q"', "t")
    flashrag = passage_from_row({"id": "b", "contents": '"Title"\nbody'})
    assert flashrag == Passage("b", "Title", "body")
    assert flashrag.contents == '"Title"\nbody'
    with pytest.raises(ValueError, match="needs 'text'"):
        passage_from_row({"id": "c"})
    with pytest.raises(ValueError, match="JSON object"):
        passage_from_row(["not", "a", "dict"])


# --------------------------------------------------------------------------- where data lives


def test_the_shipped_data_is_inside_the_repo_and_compressed() -> None:
    from shared.config import REPO_ROOT, corpus_path

    assert dataset_path("hotpotqa") == REPO_ROOT / "data" / "hotpotqa" / "dev.jsonl.gz"
    assert corpus_path() == REPO_ROOT / "data" / "corpus" / "wiki_passages.jsonl.gz"
    assert sum(1 for _ in iter_passages()) == 17_600


def test_gz_and_plain_jsonl_read_alike(tmp_path: Path) -> None:
    rows = [{"id": str(i), "question": f"q{i}", "answers": ["a"]} for i in range(5)]
    write_jsonl(tmp_path / "x.jsonl", rows)
    write_jsonl(tmp_path / "x.jsonl.gz", rows)
    assert (tmp_path / "x.jsonl.gz").read_bytes()[:2] == b"\x1f\x8b"  # really compressed
    assert list(read_jsonl(tmp_path / "x.jsonl")) == list(read_jsonl(tmp_path / "x.jsonl.gz")) == rows
    assert load_questions(str(tmp_path / "x.jsonl.gz"))[0]["source"] == "x"
    again = tmp_path / "again.jsonl.gz"
    write_jsonl(again, rows)
    assert again.read_bytes() == (tmp_path / "x.jsonl.gz").read_bytes()  # reproducible bytes


def test_imported_datasets_are_found_after_the_shipped_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARCHLAB_CACHE_DIR", str(tmp_path))
    rows = [{"id": str(i), "question": f"q{i}", "answers": ["a"], "source": "mine"} for i in range(40)]
    write_jsonl(tmp_path / "data" / "mine" / "dev.jsonl.gz", rows)
    write_jsonl(tmp_path / "data" / "hotpotqa" / "dev.jsonl.gz", rows)  # cannot shadow the shipped set
    assert set(available_datasets()) == {*DATASETS, "mine"}
    assert available_datasets()["hotpotqa"] == dataset_path("hotpotqa") != tmp_path / "data" / "hotpotqa"
    train, evaluation = load_split("mine", "train"), load_split("mine", "eval")
    assert len(train) + len(evaluation) == 40 and {split_of("mine", r["id"]) for r in evaluation} == {"eval"}
    with pytest.raises(ValueError, match="valid: hotpotqa.*mine"):
        load_split("yours")


def test_data_dir_still_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import corpus_path

    monkeypatch.setenv("SEARCHLAB_DATA_DIR", str(tmp_path))
    write_jsonl(tmp_path / "nq" / "dev.jsonl", [{"id": "1", "question": "q", "answers": ["a"]}])
    write_jsonl(tmp_path / "corpus" / "wiki_passages.jsonl", [{"id": "p", "title": "T", "text": "x"}])
    assert dataset_path("nq") == tmp_path / "nq" / "dev.jsonl"
    assert load_split("nq", "all") == [{"id": "1", "question": "q", "answers": ["a"]}]
    assert corpus_path() == tmp_path / "corpus" / "wiki_passages.jsonl"
    assert list(iter_passages()) == [Passage("p", "T", "x")]
