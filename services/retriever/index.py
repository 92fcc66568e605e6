"""Index folders: build one from a JSONL corpus, reuse it when nothing changed, read it back.

    python -m services.retriever build --corpus corpus.jsonl --out <dir> --index-type flat|hnsw|ivfpq

An index folder describes itself:

    manifest.json          encoder, dim, index type and params, corpus path/sha256/count, build stats
    dense.faiss            FAISS index over L2-normalized vectors (inner product = cosine)
    docs.jsonl             the passages in index order ({"id","title","text"}), one per line
    docs.offsets.npy       byte offset of every line (+ the end): documents are read on demand
    bm25/                  bm25s index (optional)

Corpus rows are ``{"id","title","text"}`` or FlashRAG's ``{"id","contents"}`` with
``contents = '"Title"\\ntext'``, in a ``.jsonl`` or ``.jsonl.gz`` file. The corpus is streamed, never
loaded whole: one pass counts and hashes it (:func:`services.retriever.plan.scan_corpus`), the second
reads it in chunks that are encoded (length-sorted) and added to FAISS as they come, while the
passages go to ``docs.jsonl``. Memory is the encoder, one chunk and the
index itself (plus the BM25 part, which bm25s builds in RAM: off by default above
``plan.BM25_AUTO_MAX`` passages when the build is planned by ``searchlab index build``).
IVF-PQ is the option for corpora that do not fit in RAM as floats (wiki-18: 21M passages): it
trains on the first ``ivf_train_size`` passages, then adds the rest chunk by chunk, and stores
``pq_m`` bytes (+ an 8-byte id) per passage. ``plan.py`` chooses the type from the size
(``--index auto``) and says what a build will cost before it starts.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import time
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from services.retriever.plan import auto_nlist, auto_pq_m, scan_corpus
from shared.data import Passage, iter_passages
from shared.progress import progress_bar

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: titles are HTML-unescaped by shared.data.passage_from_row
IndexType = Literal["flat", "hnsw", "ivfpq"]
INDEX_TYPES: tuple[str, ...] = ("flat", "hnsw", "ivfpq")
MANIFEST = "manifest.json"
DENSE_FILE = "dense.faiss"
DOCS_FILE = "docs.jsonl"
OFFSETS_FILE = "docs.offsets.npy"
BM25_DIR = "bm25"


# --------------------------------------------------------------------------- corpus


def corpus_fingerprint(path: Path) -> tuple[str, int]:
    """(sha256 of the corpus's decompressed bytes, number of non-empty lines)."""
    scan = scan_corpus(path)
    return scan.sha256, scan.count


# --------------------------------------------------------------------------- document store


class DocStore:
    """The passages of an index folder, read one line at a time from a memory map."""

    def __init__(self, folder: Path):
        self.offsets = np.load(folder / OFFSETS_FILE, mmap_mode="r")  # (n + 1,) int64, paged in on demand
        self._file = open(folder / DOCS_FILE, "rb")
        import mmap

        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if len(self) else None

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def get(self, i: int) -> Passage:
        assert self._map is not None
        row = json.loads(self._map[int(self.offsets[i]):int(self.offsets[i + 1])])
        return Passage(row["id"], row["title"], row["text"])

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()


class _DocWriter:
    """Writes ``docs.jsonl`` as passages come; the line offsets are 8 bytes a passage in RAM (an int64
    array, not a list of Python ints: 168 MB rather than ~840 MB at wiki-18's 21M passages)."""

    def __init__(self, folder: Path):
        self._file = open(folder / DOCS_FILE, "wb")
        self._offsets = array("q", [0])
        self._folder = folder

    def add(self, passages: list[Passage]) -> None:
        for p in passages:
            line = json.dumps({"id": p.id, "title": p.title, "text": p.text}, ensure_ascii=False).encode() + b"\n"
            self._file.write(line)
            self._offsets.append(self._offsets[-1] + len(line))

    def finish(self) -> None:
        self._file.close()
        np.save(self._folder / OFFSETS_FILE, np.frombuffer(self._offsets, dtype=np.int64))


# --------------------------------------------------------------------------- build options


@dataclass(frozen=True)
class BuildOptions:
    """How to build an index; all of it is recorded in the manifest and part of the reuse key."""

    encoder: str = "minilm"  # "minilm" | "e5:<path>" | "<kind>:<path>" | a sentence-transformers folder
    index_type: IndexType = "flat"
    bm25: bool = True  # also build a bm25s index (for mode=bm25|hybrid)
    hnsw_m: int = 32  # HNSW graph degree
    hnsw_ef_construction: int = 200
    ivf_nlist: int = 0  # IVF cells; 0 -> about 4·sqrt(n), at least 39 training points per cell
    pq_m: int = 0  # PQ sub-quantizers (bytes per vector); 0 -> dim / 8
    pq_nbits: int = 8
    ivf_train_size: int = 100_000  # passages used to train IVF-PQ (taken from the corpus start)


@dataclass(frozen=True)
class RunOptions:
    """How to run a build; not part of the reuse key (does not change the result)."""

    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # encoder compute dtype
    batch_size: int = 16  # passages per encoder forward (small sorted batches: little padding)
    chunk_size: int = 16_384  # passages read, sorted and encoded together
    sort_by_length: bool = True  # length-sorted batches: little compute goes to padding
    progress: bool = True  # tqdm progress bar
    threads: int = 0  # torch/FAISS threads during the build (restored after); 0 -> leave as they are


@dataclass
class BuildStats:
    count: int = 0
    seconds: float = 0.0  # whole build, wall clock
    cpu_seconds: float = 0.0  # whole build, CPU time of this process (robust on a shared machine)
    encode_seconds: float = 0.0
    passages_per_s: float = 0.0  # count / seconds
    passages_per_cpu_s: float = 0.0  # count / cpu_seconds
    encode_passages_per_s: float = 0.0
    sort_by_length: bool = True
    dtype: str = "float32"
    batch_size: int = 16
    extra: dict[str, Any] = field(default_factory=dict)


def _new_faiss_index(opts: BuildOptions, dim: int, n: int) -> tuple[Any, dict[str, Any]]:
    import faiss

    if opts.index_type == "flat":
        flat: Any = faiss.IndexFlatIP(dim)
        return flat, {}
    if opts.index_type == "hnsw":
        index: Any = faiss.IndexHNSWFlat(dim, opts.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = opts.hnsw_ef_construction
        return index, {"hnsw_m": opts.hnsw_m, "hnsw_ef_construction": opts.hnsw_ef_construction}
    if opts.index_type == "ivfpq":
        if n < 256:  # 8-bit PQ trains 256 centroids per sub-quantizer
            raise ValueError(f"ivfpq needs at least 256 passages to train (corpus has {n}); use flat or hnsw")
        nlist = opts.ivf_nlist or auto_nlist(min(n, opts.ivf_train_size))
        pq_m = opts.pq_m or auto_pq_m(dim)
        if dim % pq_m:
            raise ValueError(f"pq_m={pq_m} must divide the encoder dimension {dim}")
        index = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_m}x{opts.pq_nbits}np", faiss.METRIC_INNER_PRODUCT)
        return index, {"ivf_nlist": nlist, "pq_m": pq_m, "pq_nbits": opts.pq_nbits}
    raise ValueError(f"unknown index type '{opts.index_type}'; valid: {', '.join(INDEX_TYPES)}")


def _chunks(passages: Iterator[Passage], size: int) -> Iterator[list[Passage]]:
    chunk: list[Passage] = []
    for p in passages:
        chunk.append(p)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- build


def build_key(opts: BuildOptions, corpus_sha256: str) -> dict[str, Any]:
    """What must match for an existing index folder to be reused."""
    return {"format": FORMAT_VERSION, "corpus_sha256": corpus_sha256, **asdict(opts)}


def read_manifest(index_dir: Path) -> dict[str, Any] | None:
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def build_index(corpus_path: Path, out_dir: Path, encoder: str = "minilm", index_type: IndexType = "flat",
                *, options: BuildOptions | None = None, run: RunOptions | None = None,
                limit: int | None = None) -> dict[str, Any]:
    """Build an index folder at ``out_dir`` from ``corpus_path``; returns its manifest.

    ``options`` overrides ``encoder``/``index_type`` when given. ``limit``: only the first
    ``limit`` passages (tests, quick looks). The folder is written beside ``out_dir`` and
    renamed into place at the end, so a reader never sees half an index.
    """
    opts = options or BuildOptions(encoder=encoder, index_type=index_type)
    run = run or RunOptions()
    if run.threads <= 0:
        return _build(Path(corpus_path), Path(out_dir), opts, run, limit)
    import faiss
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(run.threads)
    faiss.omp_set_num_threads(run.threads)
    try:
        return _build(Path(corpus_path), Path(out_dir), opts, run, limit)
    finally:
        torch.set_num_threads(before)
        faiss.omp_set_num_threads(before)


def _build(corpus_path: Path, out_dir: Path, opts: BuildOptions, run: RunOptions,
           limit: int | None) -> dict[str, Any]:
    from shared.encoders import Encoder

    start, cpu_start = time.perf_counter(), time.process_time()
    sha, total = corpus_fingerprint(corpus_path)
    if limit is not None:
        total = min(total, limit)
        sha = hashlib.sha256(f"{sha}|limit={limit}".encode()).hexdigest()
    if total == 0:
        raise ValueError(f"{corpus_path} holds no passages")

    enc = Encoder.from_name(opts.encoder, dtype=run.dtype)
    index, index_params = _new_faiss_index(opts, enc.dim, total)
    tmp = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    docs = _DocWriter(tmp)
    bm25_texts: list[str] = []
    pending: list[np.ndarray] = []  # IVF-PQ: vectors held until there are enough to train on
    stats = BuildStats(sort_by_length=run.sort_by_length, dtype=enc.dtype, batch_size=run.batch_size)

    passages = iter_passages(corpus_path, limit)
    with progress_bar(total=total, unit="passage", desc=f"index {out_dir.name}", disable=not run.progress) as bar:
        for chunk in _chunks(passages, run.chunk_size):
            docs.add(chunk)
            texts = [p.contents for p in chunk]
            if opts.bm25:
                bm25_texts.extend(texts)
            t0 = time.perf_counter()
            vecs = enc.encode(texts, kind="passage", batch_size=run.batch_size, sort_by_length=run.sort_by_length,
                              progress=bar.update)
            stats.encode_seconds += time.perf_counter() - t0
            if index.is_trained:
                index.add(vecs)
                continue
            pending.append(vecs)  # IVF-PQ: held until there are enough to train on, then added
            if sum(len(v) for v in pending) >= min(opts.ivf_train_size, total):
                _train_and_add(index, pending)
                pending = []
    if pending:
        _train_and_add(index, pending)
    docs.finish()

    import faiss

    faiss.write_index(index, str(tmp / DENSE_FILE))
    stats.count = int(index.ntotal)
    if opts.bm25:
        _build_bm25(bm25_texts, tmp / BM25_DIR, run.progress)
    stats.seconds = time.perf_counter() - start
    stats.cpu_seconds = time.process_time() - cpu_start
    stats.passages_per_s = stats.count / stats.seconds
    stats.passages_per_cpu_s = stats.count / max(stats.cpu_seconds, 1e-9)
    stats.encode_passages_per_s = stats.count / max(stats.encode_seconds, 1e-9)
    manifest = {
        "format": FORMAT_VERSION,
        "name": out_dir.name,
        "created_at": time.time(),
        "key": build_key(opts, sha),
        "corpus": {"path": str(corpus_path.resolve()), "sha256": sha, "count": stats.count, "limit": limit},
        "encoder": {"name": opts.encoder, "kind": enc.kind.name, "model_path": str(enc.folder), "dim": enc.dim,
                    "pooling": enc.pooling, "max_length": enc.max_length, "query_prefix": enc.kind.query_prefix,
                    "passage_prefix": enc.kind.passage_prefix},
        "index": {"type": opts.index_type, "metric": "inner_product", "normalized": True, **index_params},
        "bm25": {"library": "bm25s", "stopwords": "en"} if opts.bm25 else None,
        "build": asdict(stats),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log.info("built %s: %d passages in %.1fs (%.1f passages/s; encoding %.1f passages/s)", out_dir,
             stats.count, stats.seconds, stats.passages_per_s, stats.encode_passages_per_s)
    return manifest


def _train_and_add(index: Any, pending: list[np.ndarray]) -> None:
    vecs = np.concatenate(pending)
    log.info("training the IVF-PQ quantizers on %d vectors", len(vecs))
    index.train(vecs)
    index.add(vecs)


def _build_bm25(texts: list[str], folder: Path, progress: bool) -> None:
    import bm25s

    from shared.progress import interactive

    progress = progress and interactive()  # bm25s's own tqdm bars: only on a terminal
    tokens = bm25s.tokenize(texts, stopwords="en", show_progress=progress)
    bm25 = bm25s.BM25()
    bm25.index(tokens, show_progress=progress)
    bm25.save(str(folder), show_progress=False)


def ensure_index(corpus_path: Path, index_dir: Path, encoder: str = "minilm", index_type: IndexType = "flat",
                 *, options: BuildOptions | None = None, run: RunOptions | None = None,
                 limit: int | None = None) -> Path:
    """``index_dir``, built from ``corpus_path`` unless it already holds an index of that corpus
    built the same way (same corpus sha256, encoder, index type and parameters)."""
    opts = options or BuildOptions(encoder=encoder, index_type=index_type)
    corpus_path, index_dir = Path(corpus_path), Path(index_dir)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(index_dir.with_name(f".{index_dir.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes asking at once: one builds, the other reuses
        manifest = read_manifest(index_dir)
        if manifest is not None:
            sha, _ = corpus_fingerprint(corpus_path)
            if limit is not None:
                sha = hashlib.sha256(f"{sha}|limit={limit}".encode()).hexdigest()
            if manifest.get("key") == build_key(opts, sha):
                log.info("reusing the index at %s (corpus unchanged)", index_dir)
                return index_dir
            log.info("rebuilding %s: the corpus or the build options changed", index_dir)
        build_index(corpus_path, index_dir, options=opts, run=run, limit=limit)
    return index_dir
