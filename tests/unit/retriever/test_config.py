"""Retriever settings: env prefix, defaults, start-up validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.retriever.config import RetrieverSettings, corpus_index_dir
from shared.config import cache_dir


def test_env_prefix_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRIEVER_MAX_TOPK", "12")
    monkeypatch.setenv("RETRIEVER_MICROBATCH", "false")
    monkeypatch.setenv("RETRIEVER_INDEX_NAME", "mine")
    s = RetrieverSettings()
    assert (s.port, s.default_topk, s.max_topk, s.microbatch, s.default_mode) == (8001, 3, 12, False, "dense")
    assert s.resolved_index_dir() == cache_dir() / "indexes" / "mine"
    monkeypatch.setenv("RETRIEVER_INDEX_DIR", "/data/idx")
    assert RetrieverSettings().resolved_index_dir() == Path("/data/idx")


@pytest.mark.parametrize("env", [{"RETRIEVER_DEFAULT_TOPK": "9", "RETRIEVER_MAX_TOPK": "5"},
                                 {"RETRIEVER_MAX_BATCH": "0"}, {"RETRIEVER_DEFAULT_MODE": "semantic"},
                                 {"RETRIEVER_INDEX_TYPE": "ivf"}, {"RETRIEVER_DEVICE": "tpu"},
                                 {"RETRIEVER_DEVICE": "cuda:x"}, {"RETRIEVER_MAX_WAITING_BATCHES": "0"}])
def test_bad_settings_fail_at_start_up(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        RetrieverSettings()


def test_search_processes_and_threads_share_out_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.retriever.config.usable_cores", lambda: 8)
    monkeypatch.setenv("RETRIEVER_DEVICE", "cpu")
    s = RetrieverSettings()
    assert (s.process_count(), s.search_threads()) == (7, 1)  # one core left to HTTP
    monkeypatch.setenv("RETRIEVER_SEARCH_PROCESSES", "2")
    assert (RetrieverSettings().process_count(), RetrieverSettings().search_threads()) == (2, 3)
    monkeypatch.setenv("RETRIEVER_THREADS", "4")
    assert RetrieverSettings().search_threads() == 4
    monkeypatch.setenv("RETRIEVER_SEARCH_PROCESS", "false")
    assert RetrieverSettings().process_count() == 0
    monkeypatch.setattr("services.retriever.config.usable_cores", lambda: 2)
    monkeypatch.delenv("RETRIEVER_SEARCH_PROCESSES")
    monkeypatch.delenv("RETRIEVER_THREADS")
    monkeypatch.delenv("RETRIEVER_SEARCH_PROCESS")
    assert (RetrieverSettings().process_count(), RetrieverSettings().search_threads()) == (1, 1)
    monkeypatch.setenv("RETRIEVER_DEVICE", "cuda")
    assert RetrieverSettings().process_count() == 1  # one GPU: one process batches for it


def test_usable_cores_are_at_most_the_affinity() -> None:
    from services.retriever.config import usable_cores

    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def test_a_corpus_and_its_compressed_twin_share_one_cached_index(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARCHLAB_CACHE_DIR", str(tmp_path))
    assert corpus_index_dir(Path("data/corpus/wiki_passages.jsonl.gz")) == tmp_path / "indexes" / "wiki_passages-flat"
    assert corpus_index_dir(Path("/x/wiki_passages.jsonl"), "ivfpq") == tmp_path / "indexes" / "wiki_passages-ivfpq"
