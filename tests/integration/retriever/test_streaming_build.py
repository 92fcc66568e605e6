"""The streaming index build: a gzip corpus read in chunks, IVF-PQ trained on the first of them and
filled chunk by chunk, the plan printed first; the result serves the right passages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.retriever.__main__ import main
from services.retriever.engine import Retriever
from services.retriever.index import OFFSETS_FILE, DocStore, read_manifest
from shared.data import Passage, iter_passages, write_jsonl

N = 600


@pytest.fixture(scope="module")
def passages() -> list[Passage]:
    return list(iter_passages(limit=N))


@pytest.fixture(scope="module")
def gz_corpus(passages: list[Passage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "corpus.jsonl.gz"
    write_jsonl(path, ({"id": p.id, "title": p.title, "text": p.text} for p in passages))
    return path


def test_plan_only_prints_the_plan_and_builds_nothing(gz_corpus: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--corpus", str(gz_corpus), "--out", str(tmp_path / "idx"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert f"plan: {N:,} passages" in out and "plan: index flat; bm25 on" in out and "expected peak RAM" in out
    assert not (tmp_path / "idx").exists()


def test_ivfpq_streams_in_chunks_and_finds_the_passages(gz_corpus: Path, passages: list[Passage], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "idx"
    # 3 chunks (250, 250, 100); the quantizers train on the first 500 passages, the last chunk is added after
    assert main(["build", "--corpus", str(gz_corpus), "--out", str(out), "--index", "ivfpq", "--no-bm25",
                 "--chunk-size", "250", "--ivf-train-size", "500", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "plan: index ivfpq ivf_nlist=12 pq_m=48 pq_nbits=8 ivf_train_size=500; bm25 off" in printed
    manifest = read_manifest(out)
    assert manifest is not None and manifest["corpus"]["count"] == N
    assert manifest["index"] == {"type": "ivfpq", "metric": "inner_product", "normalized": True, "ivf_nlist": 12,
                                 "pq_m": 48, "pq_nbits": 8}

    offsets = np.load(out / OFFSETS_FILE)
    assert offsets.shape == (N + 1,) and offsets[0] == 0 and np.all(np.diff(offsets) > 0)
    docs = DocStore(out)
    try:
        assert [docs.get(i) for i in (0, 333, N - 1)] == [passages[0], passages[333], passages[N - 1]]
    finally:
        docs.close()

    retriever = Retriever.load(out)
    try:
        sample = passages[::30]  # 20 passages from every chunk
        hits = retriever.search([f"{p.title} {p.text}" for p in sample], topk=3)
        found = [p.id in {h.document.id for h in row} for p, row in zip(sample, hits, strict=True)]
        assert sum(found) >= len(sample) - 1, found  # PQ is lossy; its own text still ranks a passage top-3
        assert json.loads(hits[0][0].model_dump_json())["document"]["contents"].startswith('"')
    finally:
        retriever.close()
