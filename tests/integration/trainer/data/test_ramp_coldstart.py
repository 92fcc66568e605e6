"""Scripted cold-start trajectories against a real retriever service (real index, real HTTP)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.trainer.data.coldstart import ColdStartConfig, build_coldstart, contains, mask_query
from services.trainer.data.ramp import RampConfig, build_ramp, load_samples
from services.trainer.data.records import SFTRecord, read_records, tokenize_record
from shared.config import cache_dir
from shared.data import dataset_path, open_text, split_of
from shared.processes import Proc, start_service


@pytest.fixture(scope="module")
def retriever_url(small_corpus: Path, logs_dir: Path) -> Iterator[str]:
    from services.retriever.index import ensure_index

    # the same cached index the retriever's own tests use (rebuilt only when the corpus changes)
    index = ensure_index(small_corpus, cache_dir() / "indexes" / "test-small-corpus")
    proc: Proc = start_service("retriever", {"RETRIEVER_INDEX_DIR": str(index),
                                             "RETRIEVER_BUILD_IF_MISSING": "false"}, log_dir=logs_dir)
    yield proc.url
    proc.stop()


@pytest.fixture(scope="module")
def ramp_file(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cs_ramp")
    build_ramp(RampConfig(corpus=str(small_corpus), samples=40, max_passages=500, out_dir=str(out), seed=5,
                          parquet=False, report=False))
    return out / "ramp.jsonl"


def first_hotpot_rows(n: int = 30) -> list[dict[str, Any]]:
    with open_text(dataset_path("hotpotqa")) as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


@pytest.fixture(scope="module")
def coldstart(retriever_url: str, ramp_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # the small corpus holds the supporting passages of the first 30 dev questions: try their train part
    n_train = sum(split_of("hotpotqa", r["id"]) == "train" for r in first_hotpot_rows())
    out = tmp_path_factory.mktemp("coldstart")
    return build_coldstart(ColdStartConfig(retriever_url=retriever_url, ramp_path=str(ramp_file), ramp_limit=40,
                                           qa=["hotpotqa"], qa_limit=n_train, out_dir=str(out)))


def records_of(report: dict[str, Any]) -> list[SFTRecord]:
    return list(read_records(report["files"]["records"]))


def test_mask_query_uses_the_words_around_the_mask() -> None:
    masked = "Alpha beta gamma [mask] delta epsilon. Zeta [mask] eta theta."
    assert mask_query(masked, 0, 2) == "beta gamma delta epsilon."
    assert mask_query(masked, 1, 2) == "epsilon. Zeta eta theta."


def test_ramp_trajectories_are_honest(coldstart: dict[str, Any], ramp_file: Path) -> None:
    samples = {f"ramp:{s.id}": s for s in load_samples(ramp_file)}
    ramp = [r for r in records_of(coldstart) if r.source == "ramp"]
    assert coldstart["stats"]["ramp_tried"] == 40
    assert len(ramp) == coldstart["stats"]["ramp_kept"] >= 10
    for rec in ramp:
        sample = samples[rec.id]
        observations = [s.text for s in rec.segments if s.role == "observation"]
        assert len(observations) == sample.n_masks  # one real search per mask
        for span, obs in zip(sample.spans, observations, strict=True):
            assert contains(obs, span) and obs.strip().startswith("<information>")
        assert rec.segments[-1].text.endswith(f"<answer> {sample.answer} </answer>")
        assert rec.ground_truth == sample.spans
        assert rec.messages[-1]["content"].split("Passage:")[-1].count("[mask]") == sample.n_masks


def test_qa_trajectories_use_only_the_train_part(coldstart: dict[str, Any]) -> None:
    qa = [r for r in records_of(coldstart) if r.source == "hotpotqa"]
    assert qa, coldstart["stats"]
    eval_ids = {r["id"] for r in first_hotpot_rows() if split_of("hotpotqa", r["id"]) == "eval"}
    for rec in qa:
        assert split_of("hotpotqa", rec.meta["qid"]) == "train" and rec.meta["qid"] not in eval_ids
        answer = rec.segments[-1].text.split("<answer>")[1].split("</answer>")[0].strip()
        assert answer in rec.ground_truth
        observed = "".join(s.text for s in rec.segments if s.role == "observation")
        assert contains(observed, answer)  # the answer was retrieved, not known in advance
        first = rec.meta["queries"][0]  # the first search is the question itself
        assert first == " ".join(first.split()) and first in " ".join(rec.messages[-1]["content"].split())


def test_records_tokenize_with_observations_masked(coldstart: dict[str, Any], smollm2_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_path))
    for rec in records_of(coldstart)[:10]:
        t = tokenize_record(rec, tokenizer)
        for start, end, role in t.segment_bounds:
            assert set(t.loss_mask[start:end]) == ({1} if role == "policy" else {0})
        assert sum(t.loss_mask[:t.prompt_len]) == 0


def test_records_load_in_the_trainers_sft_loader(coldstart: dict[str, Any], smollm2_path: Path) -> None:
    sft = pytest.importorskip("services.trainer.learn.sft")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_path))
    records = sft.load_records([coldstart["files"]["records"]])
    assert len(records) == coldstart["records"]
    ids, mask = sft.sft_tokenizer()(records[0], tokenizer)
    assert len(ids) == len(mask) and 0 < sum(mask) < len(mask)


def test_exclude_source_drops_the_masked_passage(retriever_url: str, ramp_file: Path, tmp_path: Path) -> None:
    report = build_coldstart(ColdStartConfig(retriever_url=retriever_url, ramp_path=str(ramp_file), ramp_limit=15,
                                             exclude_source=True, out_dir=str(tmp_path)))
    for rec in records_of(report):
        assert all(rec.meta["source_id"] not in ids for ids in rec.meta["retrieved_ids"])
        assert not rec.meta["source_retrieved"]
    assert report["stats"]["ramp_tried"] == 15
