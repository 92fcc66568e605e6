"""Settings of the retriever service (env prefix ``RETRIEVER_``, e.g. ``RETRIEVER_INDEX_DIR``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.retriever.index import IndexType
from shared.config import ServiceSettings, cache_dir, corpus_path
from shared.schemas import SearchMode


def default_index_dir(name: str) -> Path:
    """Where index ``name`` lives unless told otherwise: ``<cache>/indexes/<name>``."""
    return cache_dir() / "indexes" / name


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
    threads: int = Field(default=0, ge=0)  # torch + FAISS threads; 0 -> all cores (all but one in-process)
    search_process: bool = True  # encode + search in a child process: no GIL shared with HTTP (process.py)
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
    batch_wait_ms: float = Field(default=2.0, ge=0)  # how long a batch waits for more requests to join
    max_batch: int = Field(default=64, gt=0)  # queries per batch
    max_pending: int = Field(default=4096, gt=0)  # queries waiting; more -> 503 + Retry-After
    cache_size: int = Field(default=10_000, ge=0)  # LRU of query results; 0 turns it off

    @model_validator(mode="after")
    def _check(self) -> RetrieverSettings:
        if self.default_topk > self.max_topk:
            raise ValueError(f"default_topk ({self.default_topk}) is above max_topk ({self.max_topk})")
        return self

    def resolved_index_dir(self) -> Path:
        return self.index_dir or default_index_dir(self.index_name)

    def resolved_corpus(self) -> Path:
        return self.corpus or corpus_path()
