"""The retriever's serving under load, on loopback over a real index: several search processes
sharing one memory-mapped index, load shed with 503 + Retry-After, a dead process replaced while
the others keep answering."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.data import dataset_path, read_jsonl
from shared.processes import Proc, start_service


def _questions(n: int) -> list[str]:
    return [row["question"] for _, row in zip(range(n), read_jsonl(dataset_path("hotpotqa")), strict=False)]


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def pool_service(small_index: Path, logs_dir: Path) -> Iterator[Proc]:
    env = {"RETRIEVER_INDEX_DIR": str(small_index), "RETRIEVER_BUILD_IF_MISSING": "false",
           "RETRIEVER_SEARCH_PROCESSES": "2", "RETRIEVER_THREADS": "1", "RETRIEVER_MAX_BATCH": "2",
           "RETRIEVER_MAX_WAITING_BATCHES": "1", "RETRIEVER_CACHE_SIZE": "0", "RETRIEVER_LOAD_BM25": "false"}
    proc = start_service("retriever", env, log_dir=logs_dir / "retriever-pool")
    yield proc
    proc.stop()


def _pids(url: str) -> list[int]:
    return list(httpx.get(url + "/info", timeout=10).json()["details"]["search_process"]["pids"])


def test_search_processes_share_one_memory_mapped_index(pool_service: Proc, small_index: Path) -> None:
    pids = _pids(pool_service.url)
    assert len(set(pids)) == 2 and pool_service.popen.pid not in pids
    for pid in pids:  # the FAISS file is mapped (page cache, one copy), not read into each process
        assert str(small_index / "dense.faiss") in Path(f"/proc/{pid}/maps").read_text()


async def test_overload_is_shed_with_503_and_retry_after_and_the_answered_are_right(pool_service: Proc) -> None:
    questions = _questions(30)
    shed_before = _metric(pool_service.url, "searchlab_retriever_shed_queries_total")
    async with httpx.AsyncClient(base_url=pool_service.url, timeout=120,
                                 limits=httpx.Limits(max_connections=100)) as client:
        responses = await asyncio.gather(*(client.post("/retrieve", json={"queries": [q], "topk": 3})
                                           for q in questions * 3))
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 503}, codes  # 2 processes x 2 queries running, 4 waiting: the rest is shed
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "overloaded"
            assert int(response.headers["Retry-After"]) >= 1
    assert _metric(pool_service.url, "searchlab_retriever_shed_queries_total") - shed_before == codes.count(503)
    alone = {q: httpx.post(pool_service.url + "/retrieve", json={"queries": [q], "topk": 3}, timeout=60).json()
             for q in questions}
    for q, response in zip(questions * 3, responses, strict=True):
        if response.status_code == 200:
            assert response.json() == alone[q]


def test_a_dead_search_process_is_replaced_while_the_other_answers(pool_service: Proc) -> None:
    first, second = _pids(pool_service.url)
    os.kill(first, signal.SIGKILL)
    time.sleep(0.5)
    codes = [httpx.post(pool_service.url + "/retrieve", json={"queries": [f"Florida Senate {i}"], "topk": 2},
                        timeout=60).status_code for i in range(6)]
    assert codes.count(503) <= 1 and codes[-1] == 200, codes  # at most the one call that met the dead pipe
    deadline = time.monotonic() + 120
    while len(pids := _pids(pool_service.url)) < 2:
        assert time.monotonic() < deadline, "the dead search process was not replaced"
        time.sleep(1)
    assert second in pids and first not in pids
