"""What an index build will cost before it starts, and the index type a corpus size calls for.

    scan = scan_corpus(path)                            # one streaming pass: sha256, passages, bytes
    options = auto_options(BuildOptions(), scan.count, dim=384)   # ``--index auto``
    plan = plan_build(scan, options, dim=384, run=RunOptions())
    log.info("%s", plan.describe())                     # passages, bytes, index, RAM, disk, time

``--index auto`` by corpus size N (d = encoder dimension):

    N <  100k    flat      exact inner product; 4·d bytes per passage in RAM
    N <  1M      hnsw      M = 32, efConstruction = 200: 4·d + ~270 bytes per passage, ~99% recall@10
    N >= 1M      ivfpq     nlist = 4·sqrt(N) (at most 65,536 and train/39), PQ m = d/8 bytes per
                           passage (+ 8 for the id), trained on max(100k, 40·nlist) passages (at most 1M)

BM25 (bm25s) cannot be built incrementally: it tokenizes every passage in memory and builds one sparse
matrix, so its RAM grows with N. It is on by default up to ``BM25_AUTO_MAX`` passages and off above
(the plan says so); ``--bm25`` forces it on, ``--no-bm25`` off.

The costs (:data:`MEASURED`) were measured on the project's 2-core CPU machines with
``bench/index_scale.py`` and the checks described next to them; the plan is linear in them, so a
bigger run is an extrapolation of a measured one (``docs/data.md`` has the 200k-passage figures and
the wiki-18 plan).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.data import open_binary

if TYPE_CHECKING:
    from services.retriever.index import BuildOptions, RunOptions

MB = 1 << 20

# --------------------------------------------------------------------------- measured costs
# Flat below this many passages (exact search is cheap: 100k x 384-d = 154 MB), HNSW below
# AUTO_HNSW_BELOW (1M x 1.8 KB = 1.8 GB of RAM, ~10 min of graph building on 2 cores), IVF-PQ above.
AUTO_FLAT_BELOW = 100_000
AUTO_HNSW_BELOW = 1_000_000
BM25_AUTO_MAX = 1_000_000  # BM25 on by default up to here (its RAM grows with N, see Costs.bm25_ram)
IVF_TRAIN_MAX = 1_000_000  # IVF-PQ training sample cap (1M x 384-d floats = 1.5 GB held until trained)
IVF_NLIST_MAX = 65_536
IVF_ID_BYTES = 8  # IVF lists store an int64 id next to each code


@dataclass(frozen=True)
class Costs:
    """Per-passage and fixed costs of a build; :data:`MEASURED` holds the measured ones."""

    base_rss: float  # bytes: the build process before any passage (python, torch, transformers, faiss, encoder)
    chunk_bytes: float  # RAM per passage of the chunk being encoded (Passage objects, texts, token ids, vectors)
    hnsw_link_bytes_per_m: float  # HNSW graph bytes per passage per unit of M
    bm25_ram: float  # bytes per passage while bm25s indexes (it holds every token)
    bm25_disk: float  # bytes per passage of the bm25/ folder
    encode_pps: float  # passages/s of the encoder (the build time is N over this)
    hnsw_add_pps: float  # passages/s of HNSW inserts (IVF-PQ adds are ~40k/s: negligible)


# Measured on the project's 2-core CPU machines (AVX-512 + AMX; MiniLM bf16, faiss-cpu 1.15.1):
# - base_rss: peak RSS of a 300-passage flat build without BM25 (bench/index_scale.py, its first build);
# - chunk_bytes: (peak RSS at --chunk 16,384 - peak at 512) / 15,872, one 16k-passage corpus;
# - hnsw_link_bytes_per_m: FAISS size check, 50k random unit 384-d vectors: HNSW(M=32) writes
#   1808.3 bytes per passage = 4·d + 272 (flat 1536.0; IVF-PQ48 91.5 at nlist 894, of which 56 per
#   passage and the rest the centroids, which do not grow with N);
# - bm25_ram / bm25_disk: peak RSS growth of bm25s tokenize + index over the 17,600 shipped passages,
#   and the size of the folder it saves;
# - encode_pps / hnsw_add_pps: bench/index_scale.py at 200k passages; the FAISS size check above.
MEASURED = Costs(base_rss=900 * MB, chunk_bytes=6_000, hnsw_link_bytes_per_m=8.5, bm25_ram=4_000, bm25_disk=520,
                 encode_pps=200.0, hnsw_add_pps=1_600.0)


# --------------------------------------------------------------------------- the corpus pass


@dataclass(frozen=True)
class CorpusScan:
    """One streaming pass over a corpus file (never loaded whole)."""

    path: str
    sha256: str  # of the decompressed bytes: the same corpus as .jsonl or .jsonl.gz has one key
    count: int  # non-empty lines (passages)
    bytes: int  # decompressed bytes
    file_bytes: int  # on disk (compressed for .gz)


_SCANS: dict[tuple[str, int, int], CorpusScan] = {}


def scan_corpus(path: Path) -> CorpusScan:
    """sha256, passages and bytes of a JSONL(.gz) corpus, in one pass of 1 MB reads (remembered for
    the file's size and mtime, so the plan, the reuse check and the build read it once)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _SCANS:
        return _SCANS[key]
    digest = hashlib.sha256()
    count = size = 0
    with open_binary(path) as f:
        for line in f:
            digest.update(line)
            size += len(line)
            count += bool(line.strip())
    scan = CorpusScan(str(path), digest.hexdigest(), count, size, stat.st_size)
    _SCANS[key] = scan
    return scan


def encoder_dim(name: str) -> int:
    """The output dimension of encoder ``name`` from its ``config.json`` (no model load)."""
    from shared.encoders import parse_encoder_name

    _, folder = parse_encoder_name(name)
    config = json.loads((folder / "config.json").read_text())
    return int(config.get("hidden_size") or config["d_model"])


# --------------------------------------------------------------------------- --index auto


def auto_nlist(n: int) -> int:
    """IVF cells for ``n`` training points: about 4·sqrt(n), at least 39 points per cell."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39, IVF_NLIST_MAX))


def auto_pq_m(dim: int) -> int:
    """PQ sub-quantizers: d/8 (one byte per 8 dimensions), the largest divisor of d not above it."""
    for m in range(max(1, dim // 8), 0, -1):
        if dim % m == 0:
            return m
    return 1


def auto_options(options: BuildOptions, n: int, dim: int, *, bm25: bool | None = None) -> BuildOptions:
    """``options`` with the index type and its parameters chosen from the corpus size ``n``
    (see the module docstring). ``bm25``: None -> on up to ``BM25_AUTO_MAX`` passages."""
    options = replace(options, bm25=n <= BM25_AUTO_MAX if bm25 is None else bm25)
    if n < AUTO_FLAT_BELOW:
        return replace(options, index_type="flat")
    if n < AUTO_HNSW_BELOW:
        return replace(options, index_type="hnsw", hnsw_m=32, hnsw_ef_construction=200)
    return ivfpq_options(options, n, dim)


def ivfpq_options(options: BuildOptions, n: int, dim: int) -> BuildOptions:
    """IVF-PQ for ``n`` passages: nlist = 4·sqrt(n) cells, trained on max(100k, 40·nlist) passages (capped),
    at least 39 training points per cell; PQ with d/8 one-byte sub-quantizers."""
    nlist = min(int(4 * math.sqrt(n)), IVF_NLIST_MAX)  # cells for the whole corpus, not the sample
    train = min(n, IVF_TRAIN_MAX, max(100_000, 40 * nlist))
    return replace(options, index_type="ivfpq", ivf_nlist=max(1, min(nlist, train // 39)), pq_m=auto_pq_m(dim),
                   pq_nbits=8, ivf_train_size=train)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class BuildPlan:
    """What a build will hold and write, from the corpus scan and the measured per-passage costs."""

    passages: int
    corpus_bytes: int  # decompressed
    index_type: str
    index_params: dict[str, Any]
    bm25: bool
    ram_bytes: int  # expected peak RSS of the build
    disk_bytes: int  # expected size of the index folder
    seconds: float  # expected build time at ``encode_pps``
    encode_pps: float  # the encoder throughput the time assumes
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in self.index_params.items())
        lines = [f"plan: {self.passages:,} passages, {self.corpus_bytes / MB:,.1f} MB of text",
                 f"plan: index {self.index_type} {params}".rstrip() + f"; bm25 {'on' if self.bm25 else 'off'}",
                 f"plan: expected peak RAM {_size(self.ram_bytes)}, disk {_size(self.disk_bytes)}, "
                 f"time {_duration(self.seconds)} (encoding at {self.encode_pps:.0f} passages/s as measured on "
                 f"2 CPU cores)"]
        return "\n".join([*lines, *(f"plan: note: {n}" for n in self.notes)])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def index_bytes_per_passage(options: BuildOptions, dim: int, costs: Costs = MEASURED) -> float:
    """FAISS bytes per passage (in RAM and on disk alike) of the index ``options`` describe."""
    if options.index_type == "flat":
        return 4.0 * dim
    if options.index_type == "hnsw":
        return 4.0 * dim + costs.hnsw_link_bytes_per_m * options.hnsw_m
    return float((options.pq_m or auto_pq_m(dim)) * options.pq_nbits // 8 + IVF_ID_BYTES)


def plan_build(scan: CorpusScan, options: BuildOptions, dim: int, run: RunOptions,
               limit: int | None = None, costs: Costs = MEASURED) -> BuildPlan:
    """The expected RAM, disk and time of building ``options`` over ``scan`` (linear in ``costs``)."""
    n = min(scan.count, limit) if limit is not None else scan.count
    text_bytes = scan.bytes * n // max(scan.count, 1)
    per_index = index_bytes_per_passage(options, dim, costs)
    fixed_index = 0.0
    params: dict[str, Any] = {}
    if options.index_type == "hnsw":
        params = {"hnsw_m": options.hnsw_m, "hnsw_ef_construction": options.hnsw_ef_construction}
    elif options.index_type == "ivfpq":
        train = min(n, options.ivf_train_size)
        nlist = options.ivf_nlist or auto_nlist(train)
        params = {"ivf_nlist": nlist, "pq_m": options.pq_m or auto_pq_m(dim), "pq_nbits": options.pq_nbits,
                  "ivf_train_size": train}
        fixed_index = 4.0 * dim * nlist + 4.0 * dim * 256  # coarse centroids + PQ codebooks
    docs_disk = text_bytes + 8 * (n + 1)  # docs.jsonl (re-serialized rows, about the corpus size) + offsets
    disk = docs_disk + per_index * n + fixed_index + (costs.bm25_disk * n if options.bm25 else 0)
    ram = (costs.base_rss + costs.chunk_bytes * min(n, run.chunk_size) + per_index * n + fixed_index
           + (costs.bm25_ram * n if options.bm25 else 0))
    if options.index_type == "ivfpq":
        ram += 8.0 * dim * params["ivf_train_size"]  # vectors held until trained, and their concatenation
    seconds = n / costs.encode_pps + (n / costs.hnsw_add_pps if options.index_type == "hnsw" else 0.0)
    notes: list[str] = []
    if not options.bm25 and n > BM25_AUTO_MAX:
        notes.append(f"bm25 is off: bm25s holds every token in RAM (~{_size(costs.bm25_ram * n)} here); "
                     f"pass --bm25 to build it anyway")
    if options.index_type == "flat" and n >= AUTO_FLAT_BELOW:
        notes.append("flat search over this many passages is slow; --index auto picks hnsw or ivfpq")
    return BuildPlan(n, text_bytes, options.index_type, params, options.bm25, int(ram), int(disk), seconds,
                     costs.encode_pps, tuple(notes))


def _size(n: float) -> str:
    return f"{n / MB:,.0f} MB" if n < 10 * 1024 * MB else f"{n / (1024 * MB):,.1f} GB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
