"""Fixtures of the retriever's integration tests: a real index over real passages, a real service.

``small_index`` (root conftest) is the index of ``small_corpus`` (the first 500 corpus passages plus the
supporting passages of the first 30 HotpotQA dev questions), built by ``ensure_index`` once and
reused while the corpus is unchanged (the simulator's tests share it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.retriever.engine import Retriever
from shared.processes import Proc, start_service

# A long batch wait makes coalescing certain in tests (the bench measures the real default).
SERVICE_ENV = {"RETRIEVER_BATCH_WAIT_MS": "25", "RETRIEVER_MAX_TOPK": "20", "RETRIEVER_MAX_QUERIES": "16",
               "RETRIEVER_BUILD_IF_MISSING": "false"}


@pytest.fixture(scope="session")
def retriever(small_index: Path) -> Iterator[Retriever]:
    r = Retriever.load(small_index)
    yield r
    r.close()


@pytest.fixture(scope="session")
def retriever_url(small_index: Path, logs_dir: Path) -> Iterator[str]:
    proc: Proc = start_service("retriever", {"RETRIEVER_INDEX_DIR": str(small_index), **SERVICE_ENV},
                               log_dir=logs_dir)
    yield proc.url
    proc.stop()
