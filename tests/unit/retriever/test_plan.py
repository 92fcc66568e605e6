"""Build plans and ``--index auto``: the index type and parameters a corpus size gets, and what it will cost."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from services.retriever.index import BuildOptions, RunOptions
from services.retriever.plan import (
    AUTO_FLAT_BELOW,
    AUTO_HNSW_BELOW,
    BM25_AUTO_MAX,
    IVF_TRAIN_MAX,
    MB,
    CorpusScan,
    auto_options,
    plan_build,
    scan_corpus,
)

GB = 1024 * MB


@pytest.mark.parametrize(("n", "kind"), [(17_600, "flat"), (AUTO_FLAT_BELOW, "hnsw"), (500_000, "hnsw"),
                                         (AUTO_HNSW_BELOW, "ivfpq"), (21_015_324, "ivfpq")])
def test_auto_picks_the_index_type_from_the_size(n: int, kind: str) -> None:
    assert auto_options(BuildOptions(), n, 384).index_type == kind


def test_auto_ivfpq_parameters_follow_the_size() -> None:
    wiki = auto_options(BuildOptions(), 21_015_324, 384)
    assert wiki.ivf_nlist == int(4 * 21_015_324 ** 0.5)  # 18,336 cells
    assert wiki.ivf_train_size >= 39 * wiki.ivf_nlist  # enough training points per cell
    assert (wiki.pq_m, wiki.pq_nbits) == (48, 8)  # 384 / 8 one-byte sub-quantizers
    assert auto_options(BuildOptions(), 21_015_324, 768).pq_m == 96  # e5-base
    huge = auto_options(BuildOptions(), 10**9, 384)
    assert (huge.ivf_train_size, huge.ivf_nlist) == (IVF_TRAIN_MAX, IVF_TRAIN_MAX // 39)  # the sample caps both


def test_bm25_is_off_by_default_above_its_limit() -> None:
    assert auto_options(BuildOptions(), BM25_AUTO_MAX, 384).bm25
    assert not auto_options(BuildOptions(), BM25_AUTO_MAX + 1, 384).bm25
    assert auto_options(BuildOptions(), BM25_AUTO_MAX + 1, 384, bm25=True).bm25


def test_wiki18_plan_fits_one_machine_without_bm25() -> None:
    scan = CorpusScan("wiki-18", "", 21_015_324, 21_015_324 * 688, 0)
    plan = plan_build(scan, auto_options(BuildOptions(), scan.count, 384), 384, RunOptions())
    assert plan.index_type == "ivfpq" and not plan.bm25
    assert 1 * GB < plan.ram_bytes < 8 * GB  # IVF-PQ: 56 bytes a passage in RAM, not 1.5 KB
    assert 13 * GB < plan.disk_bytes < 20 * GB  # mostly the passages' text
    assert "bm25 is off" in plan.describe()
    flat = plan_build(scan, BuildOptions(index_type="flat", bm25=False), 384, RunOptions())
    assert flat.ram_bytes > 30 * GB  # why auto does not pick flat here


def test_scan_reads_gz_and_plain_alike(tmp_path: Path) -> None:
    lines = "".join(json.dumps({"id": str(i), "title": "t", "text": "x" * i}) + "\n" for i in range(30))
    (tmp_path / "c.jsonl").write_text(lines)
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(lines)
    plain, packed = scan_corpus(tmp_path / "c.jsonl"), scan_corpus(tmp_path / "c.jsonl.gz")
    assert (plain.sha256, plain.count, plain.bytes) == (packed.sha256, packed.count, packed.bytes) \
        == (plain.sha256, 30, len(lines.encode()))
    assert packed.file_bytes < plain.file_bytes
