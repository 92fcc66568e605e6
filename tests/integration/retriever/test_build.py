"""Index builds from real passages: formats, index types, reuse, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.retriever.__main__ import main
from services.retriever.engine import Retriever
from services.retriever.index import BuildOptions, RunOptions, build_index, ensure_index, read_manifest
from shared.config import corpus_path
from shared.data import open_text

# One thread: these processes share 2 cores with the services the tests start.
QUIET = RunOptions(progress=False, threads=1)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real passages, spread over the corpus."""
    out = tmp_path_factory.mktemp("tiny") / "tiny.jsonl"
    with open_text(corpus_path()) as src, open(out, "w") as dst:
        for i, line in enumerate(src):
            if i % 440 == 0:
                dst.write(line)
    return out


def test_flashrag_contents_format_builds_the_same_documents(tiny_corpus: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in open(tiny_corpus)]
    flashrag = tmp_path / "flashrag.jsonl"
    flashrag.write_text("".join(json.dumps({"id": r["id"], "contents": f'"{r["title"]}"\n{r["text"]}'}) + "\n"
                                for r in rows))
    build_index(flashrag, tmp_path / "idx", options=BuildOptions(bm25=False), run=QUIET)
    r = Retriever.load(tmp_path / "idx")
    try:
        assert r.modes == ("dense",)
        (hits,) = r.search([rows[5]["text"]], topk=1)
        assert hits[0].document.id == rows[5]["id"]
        assert hits[0].document.contents == f'"{rows[5]["title"]}"\n{rows[5]["text"]}'
    finally:
        r.close()


def test_ensure_index_reuses_an_unchanged_corpus_and_rebuilds_a_changed_one(tiny_corpus: Path,
                                                                           tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(tiny_corpus.read_text())
    out = tmp_path / "idx"
    ensure_index(corpus, out, options=BuildOptions(bm25=False), run=QUIET)
    first = read_manifest(out)
    assert first is not None and first["corpus"]["count"] == 40
    ensure_index(corpus, out, options=BuildOptions(bm25=False), run=QUIET)
    assert read_manifest(out) == first  # reused, not rebuilt
    with open(corpus, "a") as f:
        f.write(json.dumps({"id": "extra-1", "title": "Extra", "text": "A passage added later."}) + "\n")
    ensure_index(corpus, out, options=BuildOptions(bm25=False), run=QUIET)
    second = read_manifest(out)
    assert second is not None and second["corpus"]["count"] == 41
    assert second["corpus"]["sha256"] != first["corpus"]["sha256"]


def test_cli_builds_an_hnsw_index_with_bm25(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "hnsw"
    assert main(["build", "--corpus", str(tiny_corpus), "--out", str(out), "--index-type", "hnsw",
                 "--no-sort", "--threads", "1"]) == 0
    manifest = read_manifest(out)
    assert manifest is not None
    assert manifest["index"]["type"] == "hnsw" and manifest["build"]["sort_by_length"] is False
    assert {p.name for p in out.iterdir()} >= {"manifest.json", "dense.faiss", "docs.jsonl", "docs.offsets.npy",
                                               "bm25"}
    r = Retriever.load(out)
    try:
        rows = [json.loads(line) for line in open(tiny_corpus)]
        for mode in ("dense", "bm25", "hybrid"):
            assert r.search([rows[7]["title"] + " " + rows[7]["text"]], topk=2, mode=mode)[0][0].document.id == \
                rows[7]["id"]
    finally:
        r.close()


@pytest.mark.slow
def test_ivfpq_index_searches_approximately(small_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ivfpq"
    manifest = build_index(small_corpus, out, options=BuildOptions(index_type="ivfpq", bm25=False), run=QUIET,
                           limit=300)
    assert manifest["index"]["pq_m"] == 48 and manifest["index"]["ivf_nlist"] >= 1
    r = Retriever.load(out)
    try:
        rows = [json.loads(line) for line in open(small_corpus)][:60:6]
        found = [r.search([row["title"] + " " + row["text"]], topk=3)[0] for row in rows]
        assert sum(row["id"] in [h.document.id for h in hits] for row, hits in zip(rows, found, strict=True)) >= 8
    finally:
        r.close()


def test_ivfpq_refuses_a_corpus_too_small_to_train(tiny_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ivfpq needs"):
        build_index(tiny_corpus, tmp_path / "x", options=BuildOptions(index_type="ivfpq"), run=QUIET)
