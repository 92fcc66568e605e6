"""The retriever's work, usable in-process (no HTTP): load an index folder and search it.

    from services.retriever.engine import Retriever, ensure_index
    index_dir = ensure_index(corpus_path(), cache_dir() / "indexes" / "wiki_passages")
    retriever = Retriever.load(index_dir)
    hits = retriever.search(["who wrote Hamlet"], topk=3, mode="dense")  # list[list[Hit]]

Modes: ``dense`` (encoder + FAISS inner product over unit vectors), ``bm25`` (bm25s) and
``hybrid`` (reciprocal-rank fusion of both lists, score = Σ 1/(k_rrf + rank)). One call
searches a whole batch: one encoder forward and one FAISS search for all queries.

``search_ids`` returns only (scores, ids) arrays (``Found`` rows), ``hits_for`` turns them into
passages: the search process sends back a few bytes per query and the HTTP process reads the
passages from the same memory-mapped files (``process.py``). ``device``: the encoder (and the FAISS index, when faiss was
built with GPU support) on ``cuda`` when one is there (``resolve_device``). On CPU the FAISS index
is memory-mapped (``IO_FLAG_MMAP_IFC``, flat and HNSW storage): several search processes share one
copy in the page cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from services.retriever.index import (
    BM25_DIR,
    DENSE_FILE,
    BuildOptions,
    DocStore,
    RunOptions,
    build_index,
    ensure_index,
    read_manifest,
)
from shared.encoders import Encoder
from shared.schemas import Document, Hit, SearchMode

__all__ = ["BuildOptions", "Retriever", "RunOptions", "SearchParams", "build_index", "ensure_index", "set_threads"]

log = logging.getLogger(__name__)

SEARCH_MODES: tuple[str, ...] = ("dense", "bm25", "hybrid")


@dataclass(frozen=True)
class SearchParams:
    """Query-time knobs of the index types (ignored where they do not apply)."""

    hnsw_ef_search: int = 128  # HNSW: candidates explored per query (recall vs speed)
    ivf_nprobe: int = 32  # IVF: cells visited per query
    rrf_k: int = 60  # hybrid: reciprocal-rank-fusion constant
    rrf_depth: int = 50  # hybrid: how deep each list is read before fusing
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # query encoder compute dtype
    encode_batch_size: int = 16  # queries per encoder forward (length-sorted: little padding)
    parallel_from: int = 4  # fewer queries than this run on one thread (see _threads_for)
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:<n>" (see resolve_device)
    mmap: bool = True  # CPU: memory-map the FAISS index (shared between processes) instead of reading it


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; a GPU asked for but absent is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' was asked for but torch sees no GPU here; use 'cpu' or 'auto'")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device '{device}'; valid: auto, cpu, cuda, cuda:<n>")
    return device


def read_faiss_index(path: Path, mmap: bool = True) -> Any:
    """The FAISS index at ``path``, memory-mapped when ``mmap`` (flat and HNSW storage; other
    parts are read): search processes that read the same file share one copy in the page cache."""
    import faiss

    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0)


def faiss_to_device(index: Any, device: str) -> Any:
    """``index`` on ``device``: moved to the GPU on ``cuda[:n]`` when this faiss has GPU support
    (faiss-gpu installed), else left on CPU (logged once)."""
    import faiss

    if not device.startswith("cuda"):
        return index
    if not hasattr(faiss, "StandardGpuResources"):
        log.warning("device %s: this faiss has no GPU support (faiss-cpu); the index is searched on CPU", device)
        return index
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), int(device.partition(":")[2] or 0), index)


def set_threads(n: int = 0, reserve: int = 1) -> int:
    """Threads for torch and FAISS (process-wide); 0 -> all cores but ``reserve`` (by default one,
    left to the event loop when HTTP runs in the same process). Returns the number set.

    Oversubscribed threads are much worse than too few here: torch synchronizes its threads in
    every op, so one descheduled thread stalls the forward (10x slower on a busy 2-core machine).
    """
    import os

    import faiss
    import torch

    n = n if n > 0 else max(1, (os.cpu_count() or 1) - reserve)
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    return n


@contextlib.contextmanager
def _threads_for(n_queries: int, parallel_from: int) -> Iterator[None]:
    """One torch thread for a handful of queries, all of them for a batch.

    A 20-token query is ~100 tiny ops; with two threads each op ends in a barrier, and when the
    other core is busy (HTTP, the load itself) every barrier waits for a descheduled thread:
    measured here, single-query requests ran at 41/s on two threads vs 72/s on one, while batches
    of 64 ran 1.5x faster on two.
    """
    import faiss
    import torch

    threads = torch.get_num_threads()
    if n_queries >= parallel_from or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)


@dataclass(frozen=True)
class Found:
    """One query's hits before their passages are read: scores and passage ids, best first."""

    scores: np.ndarray  # (k,) float32
    ids: np.ndarray  # (k,) int64, -1 where there is no result

    def __getitem__(self, cut: slice) -> Found:
        return Found(self.scores[cut], self.ids[cut])


def found_rows(scores: np.ndarray, ids: np.ndarray) -> list[Found]:
    return [Found(s, i) for s, i in zip(scores, ids, strict=True)]


def hits_for(docs: DocStore, found: Sequence[Found]) -> list[list[Hit]]:
    """The passages behind ``found``, one list per query (ids -1 left out)."""
    out = []
    for row in found:
        hits = []
        for score, i in zip(row.scores.tolist(), row.ids.tolist(), strict=True):
            if i >= 0:
                p = docs.get(i)
                hits.append(Hit(document=Document(id=p.id, contents=p.contents), score=score))
        out.append(hits)
    return out


class Retriever:
    """Dense / BM25 / hybrid search over one index folder."""

    def __init__(self, index_dir: Path, manifest: dict[str, Any], encoder: Encoder, index: Any, docs: DocStore,
                 bm25: Any | None, params: SearchParams):
        self.index_dir = index_dir
        self.manifest = manifest
        self.encoder = encoder
        self.index = index
        self.docs = docs
        self.bm25 = bm25
        self.params = params

    @classmethod
    def load(cls, index_dir: Path, *, encoder: str | None = None, params: SearchParams | None = None,
             load_bm25: bool = True) -> Retriever:
        """Load ``index_dir``. ``encoder`` overrides where the manifest's encoder is found
        (an index built elsewhere); its dimension must match the index."""
        import faiss

        index_dir = Path(index_dir)
        params = params or SearchParams()
        device = resolve_device(params.device)
        manifest = read_manifest(index_dir)
        if manifest is None:
            raise FileNotFoundError(f"{index_dir} is not an index folder (no manifest.json): build one with "
                                    f"`python -m services.retriever build --corpus <jsonl> --out {index_dir}`")
        enc = Encoder.from_name(encoder or manifest["encoder"]["name"], dtype=params.dtype, device=device)
        if enc.dim != manifest["encoder"]["dim"]:
            raise ValueError(f"encoder {enc.name} gives {enc.dim}-d vectors; the index at {index_dir} holds "
                             f"{manifest['encoder']['dim']}-d ones")
        on_gpu = device.startswith("cuda")
        index: Any = read_faiss_index(index_dir / DENSE_FILE, mmap=params.mmap and not on_gpu)
        if manifest["index"]["type"] == "hnsw":
            index.hnsw.efSearch = params.hnsw_ef_search
        elif manifest["index"]["type"] == "ivfpq":
            faiss.extract_index_ivf(index).nprobe = params.ivf_nprobe
        index = faiss_to_device(index, device)  # after the knobs: the GPU copy takes them over
        bm25 = None
        if load_bm25 and manifest.get("bm25") and (index_dir / BM25_DIR).is_dir():
            import bm25s

            bm25 = bm25s.BM25.load(str(index_dir / BM25_DIR), show_progress=False)
        docs = DocStore(index_dir)
        log.info("loaded %s: %d passages, %s index, encoder %s, bm25 %s", index_dir, len(docs),
                 manifest["index"]["type"], enc.name, "yes" if bm25 is not None else "no")
        return cls(index_dir, manifest, enc, index, docs, bm25, params)

    def __len__(self) -> int:
        return len(self.docs)

    @property
    def modes(self) -> tuple[str, ...]:
        return SEARCH_MODES if self.bm25 is not None else ("dense",)

    # -- search ---------------------------------------------------------------------------
    def search(self, queries: Sequence[str], topk: int = 3, mode: SearchMode = "dense") -> list[list[Hit]]:
        """The ``topk`` best passages of every query, best first."""
        return hits_for(self.docs, found_rows(*self.search_ids(queries, topk, mode)))

    def search_ids(self, queries: Sequence[str], topk: int = 3,
                   mode: SearchMode = "dense") -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the ``topk`` best passages of every query: float32 and int64 ``(n, k)``,
        best first, id -1 where there is no k-th result."""
        if mode not in self.modes:
            raise ValueError(f"mode '{mode}' is not available for this index; available: {', '.join(self.modes)}")
        k = max(1, min(topk, len(self.docs)))
        if not queries:
            return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
        if mode == "dense":
            return self.dense(queries, k)
        if mode == "bm25":
            return self.lexical(queries, k)
        return self.hybrid(queries, k)

    def dense(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        with _threads_for(len(queries), self.params.parallel_from):
            vecs = self.encoder.encode(list(queries), kind="query", batch_size=self.params.encode_batch_size)
            scores, ids = self.index.search(vecs, k)  # (n, k) float32, (n, k) int64 (-1 = no result)
        return scores, ids

    def lexical(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        import bm25s

        if self.bm25 is None:
            raise ValueError("this index has no BM25 part (it was built with --no-bm25)")
        tokens = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
        ids, scores = self.bm25.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return scores.astype(np.float32), ids.astype(np.int64)

    def hybrid(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        depth = max(k, min(self.params.rrf_depth, len(self.docs)))
        lists = [self.dense(queries, depth)[1], self.lexical(queries, depth)[1]]
        out_scores = np.zeros((len(queries), k), dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        for q in range(len(queries)):
            fused: dict[int, float] = {}
            for ranked in lists:
                for rank, doc in enumerate(ranked[q]):
                    if doc >= 0:
                        fused[int(doc)] = fused.get(int(doc), 0.0) + 1.0 / (self.params.rrf_k + rank + 1)
            best = sorted(fused.items(), key=lambda item: -item[1])[:k]
            for j, (doc, score) in enumerate(best):
                out_ids[q, j] = doc
                out_scores[q, j] = score
        return out_scores, out_ids

    def info(self) -> dict[str, Any]:
        return {"index_dir": str(self.index_dir), "manifest": self.manifest, "modes": list(self.modes),
                "encoder_dtype": self.encoder.dtype, "device": str(self.encoder.device)}

    def close(self) -> None:
        self.docs.close()
