"""``searchlab data list|import|export``: round trips through FlashRAG files, Search-R1 parquet and Hugging
Face datasets the tests write, and bad input that must stop with one error line and leave nothing behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.data_cli import main
from shared.data import DATASETS, iter_passages, load_split, read_jsonl, split_of
from shared.protocol import get_template


@pytest.fixture
def user_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh cache, so imports land in <tmp>/cache/data (the loaders' second root)."""
    monkeypatch.setenv("SEARCHLAB_CACHE_DIR", str(tmp_path / "cache"))
    yield tmp_path / "cache" / "data"


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _flashrag_rows(n: int = 24) -> list[dict[str, Any]]:
    return [{"id": f"test_{i}", "question": f"what is thing {i}?", "golden_answers": [f"thing {i}", str(i)],
             "metadata": {"hops": i % 3}} for i in range(n)]


def _search_r1_rows(rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """Rows as Search-R1's scripts/data_process/nq_search.py writes them (FlashRAG columns kept)."""
    template = get_template("search_r1")
    return [{**r, "data_source": "nq", "prompt": [{"role": "user", "content": template.build_prompt(r["question"])}],
             "ability": "fact-reasoning", "reward_model": {"style": "rule", "ground_truth": {"target": r["golden_answers"]}},
             "extra_info": {"split": split, "index": i}} for i, r in enumerate(rows)]


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def run(*argv: str) -> int:
    return main(list(argv))


def _listed(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert run("list", "--json") == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- list


def test_list_shows_every_shipped_dataset_with_its_split_sizes(user_data: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    found = _listed(capsys)
    assert set(found["datasets"]) == set(DATASETS)
    hotpot = found["datasets"]["hotpotqa"]
    assert hotpot["rows"] == 686 and hotpot["train"] + hotpot["eval"] == 686
    assert hotpot["eval"] == len(load_split("hotpotqa", "eval")) and hotpot["origin"] == "shipped"
    assert found["corpora"]["wiki_passages"]["passages"] == 17_600
    assert found["corpora"]["flashrag_wiki_sample"]["passages"] == 1_000
    assert run("list") == 0
    assert "| hotpotqa | 686 |" in capsys.readouterr().out


# --------------------------------------------------------------------------- round trips


def test_flashrag_qa_file_round_trips(user_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _flashrag_rows()
    source = _write_jsonl(tmp_path / "nq_test.jsonl", rows)
    assert run("import", "--format", "flashrag", "--name", "mynq", str(source), "--no-progress") == 0
    assert "imported 24 QA rows as 'mynq'" in capsys.readouterr().out
    assert (user_data / "mynq" / "dev.jsonl.gz").is_file()

    train, evaluation = load_split("mynq", "train"), load_split("mynq", "eval")  # found by name, split by the rule
    assert len(train) + len(evaluation) == 24 and train and evaluation
    assert {split_of("mynq", r["id"]) for r in train} == {"train"}
    listed = _listed(capsys)["datasets"]["mynq"]
    assert (listed["rows"], listed["train"], listed["eval"], listed["origin"]) == (24, len(train), len(evaluation),
                                                                                 "imported")

    assert run("export", "--format", "flashrag", "--dataset", "mynq", "--out", str(tmp_path / "out")) == 0
    back = [*read_jsonl(tmp_path / "out" / "mynq" / "train.jsonl"), *read_jsonl(tmp_path / "out" / "mynq" / "test.jsonl")]
    originals = {r["id"]: r for r in rows}
    assert len(back) == 24
    for row in back:
        original = originals[row["id"]]
        assert (row["question"], row["golden_answers"]) == (original["question"], original["golden_answers"])
        assert row["metadata"]["hops"] == original["metadata"]["hops"]


def test_flashrag_corpus_round_trips(user_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    passages = list(iter_passages(limit=50))
    source = _write_jsonl(tmp_path / "wiki.jsonl", [{"id": p.id, "contents": p.contents} for p in passages])
    assert run("import", "--format", "flashrag", "--name", "wiki50", str(source), "--no-progress") == 0
    written = user_data / "corpus" / "wiki50.jsonl.gz"
    assert list(iter_passages(written)) == passages
    assert _listed(capsys)["corpora"]["wiki50"]["passages"] == 50


def test_search_r1_parquet_round_trips(user_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _flashrag_rows(30)
    train = _write_parquet(tmp_path / "train.parquet", _search_r1_rows(rows[:20], "train"))
    test = _write_parquet(tmp_path / "test.parquet", _search_r1_rows(rows[20:], "test"))
    assert run("import", "--format", "search-r1", "--name", "nq-r1", str(train), str(test), "--no-progress") == 0
    imported = {r["id"]: r for r in load_split("nq-r1", "all")}
    assert set(imported) == {r["id"] for r in rows}
    for r in rows:
        assert (imported[r["id"]]["question"], imported[r["id"]]["answers"], imported[r["id"]]["source"]) == \
            (r["question"], r["golden_answers"], "nq")

    # and back: our verl export, imported again, is the same questions with the same answers
    assert run("export", "--format", "verl", "--dataset", "nq-r1", "--out", str(tmp_path / "verl")) == 0
    assert run("import", "--format", "search-r1", "--name", "nq-r1-again", str(tmp_path / "verl" / "train.parquet"),
               str(tmp_path / "verl" / "val.parquet"), "--no-progress") == 0
    again = {r["id"]: (r["question"], r["answers"]) for r in load_split("nq-r1-again", "all")}
    assert again == {k: (v["question"], v["answers"]) for k, v in imported.items()}


def test_hugging_face_dataset_folder_and_parquet_files_import_offline(user_data: Path, tmp_path: Path) -> None:
    import datasets

    trivia = [{"question": f"q{i}?", "answer": {"value": f"v{i}", "aliases": [f"alias {i}", f"v{i}"]}}
              for i in range(12)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(trivia[:8]),
                          "validation": datasets.Dataset.from_list(trivia[8:])}).save_to_disk(str(tmp_path / "saved"))
    assert run("import", "--format", "hf", "--name", "trivia", str(tmp_path / "saved"), "--no-progress") == 0
    rows = load_split("trivia", "all")
    assert [r["answers"] for r in rows[:2]] == [["v0", "alias 0"], ["v1", "alias 1"]]
    assert [r["id"] for r in rows] == [f"train-{i}" for i in range(1, 9)] + [f"validation-{i}" for i in range(1, 5)]
    assert rows[-1]["source_split"] == "validation"

    assert run("import", "--format", "hf", "--name", "trivia-val", "--split", "validation", str(tmp_path / "saved"),
               "--no-progress") == 0
    assert [r["question"] for r in load_split("trivia-val", "all")] == ["q8?", "q9?", "q10?", "q11?"]

    folder = tmp_path / "files"
    folder.mkdir()
    datasets.Dataset.from_list([{"id": i, "question": f"p{i}", "golden_answers": [str(i)]} for i in range(5)]) \
        .to_parquet(str(folder / "part-0.parquet"))
    assert run("import", "--format", "hf", "--name", "fromfiles", str(folder), "--no-progress") == 0
    assert [(r["id"], r["answers"]) for r in load_split("fromfiles", "all")] == [(str(i), [str(i)]) for i in range(5)]


def test_field_names_can_be_given(user_data: Path, tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "odd.jsonl", [{"qid": "a", "query": "q?", "gold": ["x"]}])
    assert run("import", "--format", "jsonl", "--name", "odd", "--field", "id=qid", "--field", "question=query",
               "--field", "answers=gold", str(source), "--no-progress") == 0
    assert [(r["id"], r["question"], r["answers"]) for r in load_split("odd", "all")] == [("a", "q?", ["x"])]


# --------------------------------------------------------------------------- bad input


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good = _flashrag_rows(3)
    return {
        "missing field": (["--format", "flashrag", str(_write_jsonl(tmp_path / "a.jsonl", [
            good[0], {"id": "x", "question": "q"}]))], r"a.jsonl:2: field 'golden_answers': is missing"),
        "wrong type": (["--format", "flashrag", str(_write_jsonl(tmp_path / "b.jsonl", [
            *good, {"id": "x", "question": ["q"], "golden_answers": ["a"]}]))],
            r"b.jsonl:4: field 'question': expected a string, got list"),
        "not json": (["--format", "flashrag", str(_write_jsonl(tmp_path / "c.jsonl", good))],
                     "c.jsonl:4: not valid JSON"),
        "empty file": (["--format", "flashrag", str(_write_jsonl(tmp_path / "d.jsonl", []))], r"d.jsonl: no rows"),
        "unknown format": (["--format", "csvish", str(_write_jsonl(tmp_path / "e.jsonl", good))],
                           r"unknown format 'csvish'; valid: flashrag, search-r1, hf, jsonl"),
        "not parquet": (["--format", "search-r1", str(_write_jsonl(tmp_path / "f.parquet", good))],
                        r"f.parquet: not a parquet file"),
        "parquet without answers": (["--format", "search-r1", str(_write_parquet(tmp_path / "g.parquet", [
            {"id": "1", "question": "q", "reward_model": {"style": "rule"}}]))],
            r"g.parquet:1: field 'reward_model.ground_truth.target': is missing"),
        "repeated id": (["--format", "flashrag", str(_write_jsonl(tmp_path / "h.jsonl", [good[0], good[0]]))],
                        r"h.jsonl:2: field 'id': 'test_0' repeats"),
        "missing file": (["--format", "flashrag", str(tmp_path / "nowhere.jsonl")], r"nowhere.jsonl: no such file"),
        "shipped name": (["--format", "flashrag", str(_write_jsonl(tmp_path / "i.jsonl", good))],
                         r"a dataset 'hotpotqa' already exists"),
    }


@pytest.mark.parametrize("case", ["missing field", "wrong type", "not json", "empty file", "unknown format",
                                  "not parquet", "parquet without answers", "repeated id", "missing file",
                                  "shipped name"])
def test_bad_input_gets_one_error_line_and_leaves_nothing(case: str, user_data: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import re

    args, expected = _bad_inputs(tmp_path)[case]
    if case == "not json":
        with open(args[-1], "a") as f:
            f.write('{"id": "broken",\n')
    name = "hotpotqa" if case == "shipped name" else "broken"
    capsys.readouterr()
    assert run("import", *args, "--name", name, "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("searchlab data import: error: "), err
    assert re.search(expected, err[0]), err[0]
    leftovers = [p for p in user_data.rglob("*")] if user_data.exists() else []
    assert leftovers == []  # no dataset folder, no temporary file


def test_a_failed_import_keeps_the_previous_one(user_data: Path, tmp_path: Path) -> None:
    good = _write_jsonl(tmp_path / "good.jsonl", _flashrag_rows(5))
    assert run("import", "--format", "flashrag", "--name", "kept", str(good), "--no-progress") == 0
    before = (user_data / "kept" / "dev.jsonl.gz").read_bytes()
    assert run("import", "--format", "flashrag", "--name", "kept", str(good), "--no-progress") == 2  # needs --force
    bad = _write_jsonl(tmp_path / "bad.jsonl", [*_flashrag_rows(5), {"id": "z", "question": "q", "golden_answers": 3}])
    assert run("import", "--format", "flashrag", "--name", "kept", "--force", str(bad), "--no-progress") == 2
    assert (user_data / "kept" / "dev.jsonl.gz").read_bytes() == before
    assert sorted(p.name for p in (user_data / "kept").iterdir()) == ["dev.jsonl.gz"]


def test_the_searchlab_command_prints_only_the_error_line(user_data: Path, tmp_path: Path) -> None:
    """Through the real entry point (logging configured, the datasets library imported)."""
    import os
    import subprocess
    import sys

    from shared.config import REPO_ROOT

    result = subprocess.run([sys.executable, "-m", "services.cli", "data", "import", "--format", "hf", "--name", "x",
                             "no_such_dataset_here"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["searchlab data import: error: no_such_dataset_here: no such folder or "
                                          "file; loading a dataset by name from the hub needs a network and "
                                          "HF_DATASETS_OFFLINE=0"]
