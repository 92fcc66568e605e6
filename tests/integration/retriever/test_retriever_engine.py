"""The in-process retriever over a real FAISS + BM25 index of real passages."""

from __future__ import annotations

import json

import pytest

from services.retriever.engine import Retriever, SearchParams, resolve_device
from services.retriever.index import DocStore
from shared.data import iter_passages


def test_every_mode_finds_a_passage_from_its_own_words(retriever: Retriever, small_corpus) -> None:
    passages = [p for _, p in zip(range(40), iter_passages(small_corpus), strict=False)][::8]
    for mode in ("dense", "bm25", "hybrid"):
        hits = retriever.search([f"{p.title} {p.text[:200]}" for p in passages], topk=3, mode=mode)
        top1 = [h[0].document.id for h in hits]
        assert sum(t == p.id for t, p in zip(top1, passages, strict=True)) >= len(passages) - 1, (mode, top1)


def test_hits_are_ranked_and_formatted(retriever: Retriever) -> None:
    (hits,) = retriever.search(["Moscow State University"], topk=7)
    assert len(hits) == 7
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h.document.id for h in hits}) == 7
    assert hits[0].document.contents.startswith('"Moscow State University"\n')


def test_topk_is_capped_by_the_corpus_and_batches_keep_order(retriever: Retriever) -> None:
    queries = ["Benedict Arnold", "Florida Senate", "Benedict Arnold"]
    batch = retriever.search(queries, topk=2)
    single = [retriever.search([q], topk=2)[0] for q in queries]
    assert [[h.document.id for h in hs] for hs in batch] == [[h.document.id for h in hs] for hs in single]
    assert len(retriever.search(["x"], topk=10**6)[0]) == len(retriever)


def test_unknown_mode_is_refused(retriever: Retriever) -> None:
    with pytest.raises(ValueError, match="available"):
        retriever.search(["x"], mode="semantic")  # type: ignore[arg-type]


def test_docstore_reads_back_the_corpus(small_index, small_corpus) -> None:
    docs = DocStore(small_index)
    try:
        rows = [json.loads(line) for line in open(small_corpus)]
        assert len(docs) == len(rows)
        for i in (0, len(rows) // 2, len(rows) - 1):
            p = docs.get(i)
            assert (p.id, p.title, p.text) == (rows[i]["id"], rows[i]["title"], rows[i]["text"])
    finally:
        docs.close()


def test_a_gpu_asked_for_where_torch_sees_none_is_refused_at_load(small_index) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="sees no GPU"):
        Retriever.load(small_index, params=SearchParams(device="cuda"))
    assert resolve_device("auto") == "cpu"


def test_search_ids_are_the_hits_without_their_passages(retriever: Retriever) -> None:
    scores, ids = retriever.search_ids(["Benedict Arnold", "Florida Senate"], topk=3)
    assert scores.shape == ids.shape == (2, 3) and ids.dtype.kind == "i"
    hits = retriever.search(["Benedict Arnold", "Florida Senate"], topk=3)
    assert [[h.document.id for h in row] for row in hits] == \
        [[retriever.docs.get(int(i)).id for i in row] for row in ids]
