"""RAMP builds from the real corpus: verbatim spans, histograms, reports, determinism, the CLI, and
verl's own ``RLHFDataset`` reading the exported parquet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from services.trainer.data.masking import fill_masks
from services.trainer.data.ramp import RampConfig, build_ramp, load_samples
from shared.data import load_passages
from shared.protocol import MASK_TOKEN


@pytest.fixture(scope="module")
def big_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """2,500 samples from the first 2,000 corpus passages (the full 20,000 runs in bench/ramp.py)."""
    out = tmp_path_factory.mktemp("ramp_big")
    return build_ramp(RampConfig(max_passages=2000, samples=2500, out_dir=str(out), seed=0))


@pytest.fixture(scope="module")
def small_build(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("ramp_small")
    return build_ramp(RampConfig(corpus=str(corpus_file), max_passages=400, samples=300, out_dir=str(out),
                                 seed=11, report=False))


def test_spans_are_verbatim_in_the_source_passages(big_build: dict[str, Any], corpus_file: Path) -> None:
    corpus = {p.id: p.text for p in load_passages(corpus_file, limit=2000)}
    samples = load_samples(big_build["files"]["jsonl"])
    assert len(samples) == 2500 == big_build["samples"]
    ok = 0
    for s in samples:
        source = corpus[s.source_id]  # checked against the corpus, not the copy in the sample
        ok += (all(span in source for span in s.spans) and fill_masks(s.masked, s.spans) == source
               and s.masked.count(MASK_TOKEN) == s.n_masks == len(s.spans))
        assert not s.masked.startswith(MASK_TOKEN)
    assert ok / len(samples) >= 0.95
    assert big_build["verbatim_rate"] >= 0.95


def test_histograms_and_report(big_build: dict[str, Any]) -> None:
    kinds = big_build["span_kinds"]
    assert {"person", "place", "organization", "work", "date", "year", "number"} <= set(kinds)
    assert set(big_build["mask_counts"]) == {1, 2, 3, 4}
    assert all(n > 300 for n in big_build["mask_counts"].values())
    md = Path(big_build["files"]["report_md"]).read_text()
    assert "Span kinds" in md and "Masks per sample" in md and "[mask]" in md
    assert Path(big_build["files"]["histograms_png"]).read_bytes()[:4] == b"\x89PNG"
    assert json.loads(Path(big_build["files"]["report_json"]).read_text())["samples"] == 2500


def test_curriculum_buckets_are_exported(big_build: dict[str, Any]) -> None:
    for k in (1, 2, 3, 4):
        table = pq.read_table(big_build["files"][f"parquet_k{k}"])
        assert table.num_rows == big_build["mask_counts"][k]
        assert {row["n_masks"] for row in table.column("extra_info").to_pylist()} == {k}


def test_same_seed_same_dataset(small_build: dict[str, Any], corpus_file: Path, tmp_path: Path) -> None:
    again = build_ramp(RampConfig(corpus=str(corpus_file), max_passages=400, samples=300, out_dir=str(tmp_path),
                                  seed=11, report=False))
    first = Path(small_build["files"]["jsonl"]).read_bytes()
    assert Path(again["files"]["jsonl"]).read_bytes() == first
    other = build_ramp(RampConfig(corpus=str(corpus_file), max_passages=400, samples=300,
                                  out_dir=str(tmp_path / "other"), seed=12, report=False, parquet=False))
    assert Path(other["files"]["jsonl"]).read_bytes() != first


def test_verl_rlhf_dataset_reads_the_parquet(small_build: dict[str, Any], smollm2_path: Path,
                                             tmp_path: Path) -> None:
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_path))
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 1024, "filter_overlong_prompts": True,
                               "truncation": "error", "cache_dir": str(tmp_path / "verl"),
                               "filter_overlong_prompts_workers": 1})
    dataset = RLHFDataset(small_build["files"]["parquet"], tokenizer, config)
    samples = load_samples(small_build["files"]["jsonl"])
    assert len(dataset) == len(samples)  # no prompt was dropped as overlong
    item = dataset[3]
    assert item["data_source"] == "ramp"
    assert item["raw_prompt"][0]["role"] == "user" and samples[3].masked in item["raw_prompt"][0]["content"]
    assert list(item["reward_model"]["ground_truth"]["spans"]) == samples[3].spans
    assert item["tools_kwargs"]["search"]["create_kwargs"]["data_source"] == "ramp"
    assert item["extra_info"]["index"] == 3


def test_cli_builds_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "services.trainer.data", "ramp", "--max-passages", "200", "--samples", "120",
         "--mask-counts", "1,2", "--answer-format", "paragraph", "--no-parquet", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["samples"] == 120 and set(summary["mask_counts"]) <= {"1", "2"}
    samples = load_samples(out / "ramp.jsonl")
    assert all(s.answer == s.text and s.answer_format == "paragraph" for s in samples)
    assert (out / "report.md").is_file() and not (out / "ramp.parquet").exists()
