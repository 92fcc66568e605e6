"""Settings of the retriever service (env prefix ``RETRIEVER_``, e.g. ``RETRIEVER_INDEX_DIR``)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.retriever.index import IndexType
from shared.config import ServiceSettings, cache_dir, corpus_path
from shared.schemas import SearchMode


def gpu_present() -> bool:
    """Whether an NVIDIA device node is there (cheap: no torch import in the HTTP process; the
    search process resolves ``device`` with torch itself)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's
    ``limits.cpu``: ``os.cpu_count()`` would say the node's 64 and start 63 search processes)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for path, parse in ((Path("/sys/fs/cgroup/cpu.max"), lambda t: t.split()),  # cgroup v2: "<quota> <period>"
                        (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), lambda t: [t.strip(), "100000"])):  # v1
        try:
            quota, period = parse(path.read_text())[:2]
        except (OSError, ValueError):
            continue
        if quota not in ("max", "-1") and int(period) > 0:
            cores = min(cores, max(1, -(-int(quota) // int(period))))
        break
    return max(1, cores)


def default_index_dir(name: str) -> Path:
    """Where index ``name`` lives unless told otherwise: ``<cache>/indexes/<name>``."""
    return cache_dir() / "indexes" / name


def corpus_index_dir(corpus: Path, index_type: str = "flat") -> Path:
    """The cached ``index_type`` index of ``corpus``: ``<cache>/indexes/<corpus name>-<type>``, the name without
    ``.gz`` / ``.jsonl`` (the shipped ``wiki_passages.jsonl.gz`` -> ``wiki_passages-flat``). ``searchlab up`` and
    the benches that serve a whole corpus share this one folder, so it is built once."""
    name = Path(corpus).name.removesuffix(".gz").removesuffix(".jsonl")
    return default_index_dir(f"{name}-{index_type}")


class RetrieverSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVER_")

    port: int = 8001
    # -- the index
    index_name: str = "wiki_passages"  # folder name under <cache>/indexes when index_dir is unset
    index_dir: Path | None = None  # an index folder (see services/retriever/index.py)
    build_if_missing: bool = True  # no index at start-up -> build one from `corpus` (minutes for 17,600)
    corpus: Path | None = None  # JSONL corpus for build_if_missing; None -> the shared wiki_passages
    index_type: IndexType = "flat"  # for build_if_missing
    encoder: str | None = None  # None -> the encoder the index was built with (name or folder)
    encoder_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 where the CPU has it
    load_bm25: bool = True  # load the BM25 part (needed for mode=bm25|hybrid)
    device: str = "auto"  # encoder (+ FAISS with faiss-gpu) on: auto (cuda when torch sees one) | cpu | cuda[:n]
    threads: int = Field(default=0, ge=0)  # torch + FAISS threads per search process; 0 -> see search_threads()
    search_process: bool = True  # encode + search in child processes: no GIL shared with HTTP (process.py)
    search_processes: int = Field(default=0, ge=0)  # how many; 0 -> one per core but one (left to HTTP), >= 1
    hnsw_ef_search: int = Field(default=128, gt=0)
    ivf_nprobe: int = Field(default=32, gt=0)
    # -- requests
    default_topk: int = Field(default=3, gt=0)
    max_topk: int = Field(default=50, gt=0)
    max_queries: int = Field(default=256, gt=0)  # per request
    max_query_chars: int = Field(default=4096, gt=0)
    default_mode: SearchMode = "dense"
    # -- throughput
    microbatch: bool = True  # coalesce concurrent requests into one encoder forward + one FAISS search
    batch_wait_ms: float = Field(default=5.0, ge=0)  # longest wait for company (adaptive: 0 when none is coming)
    max_batch: int = Field(default=64, gt=0)  # queries per batch
    max_waiting_batches: int = Field(default=1, gt=0)  # full batches per search process allowed to wait; more -> 503
    max_pending: int = Field(default=4096, gt=0)  # and never more than this many queries waiting
    cache_size: int = Field(default=10_000, ge=0)  # LRU of query results; 0 turns it off

    @model_validator(mode="after")
    def _check(self) -> RetrieverSettings:
        if self.default_topk > self.max_topk:
            raise ValueError(f"default_topk ({self.default_topk}) is above max_topk ({self.max_topk})")
        if self.device != "auto" and self.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", self.device):
            raise ValueError(f"device '{self.device}' is not one of auto, cpu, cuda, cuda:<n>")
        return self

    def process_count(self) -> int:
        """Search processes to start (0 when search runs in the HTTP process): on CPU one per core
        but one, the last left to HTTP; on a GPU one (it batches better than processes share it)."""
        if not self.search_process:
            return 0
        if self.search_processes:
            return self.search_processes
        if self.device.startswith("cuda") or (self.device == "auto" and gpu_present()):
            return 1
        return max(1, usable_cores() - 1)

    def search_threads(self) -> int:
        """torch + FAISS threads in each search process: ``threads``, else the cores shared out
        between the processes, one at the least (in-process: all cores but one).

        Parallelism comes from processes, not threads: torch ends every op of a forward in a
        barrier, and on cores HTTP (and here the load client) also use, a descheduled thread stalls
        it. Measured on this 2-core machine under load: 4.4 CPU ms per query on one thread vs
        19-32 on two (batches of 64 and 27), the share that made single-query traffic cost
        8.7 ms per query against 5 ms in client batches (bench/retriever.py)."""
        if self.threads:
            return self.threads
        cores = usable_cores()
        n = self.process_count()
        return max(1, cores - 1) if n == 0 else max(1, (cores - 1) // n)

    def resolved_index_dir(self) -> Path:
        return self.index_dir or default_index_dir(self.index_name)

    def resolved_corpus(self) -> Path:
        return self.corpus or corpus_path()
