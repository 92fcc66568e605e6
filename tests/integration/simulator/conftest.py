"""Fixtures of the simulator's integration tests: real simulators, in ``llm`` mode and in ``corpus``
mode over the root conftest's ``small_retriever`` (a real retriever service on the small corpus).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.processes import Proc, start_service

# Small documents keep generation on CPU short: 3 documents x ~12 words.
LLM_ENV = {"SIMULATOR_WORDS": "12", "SIMULATOR_TOKENS_PER_DOC": "28", "SIMULATOR_MAX_K": "6",
           "SIMULATOR_DEFAULT_K": "3", "SIMULATOR_MAX_REGENERATIONS": "1"}


@pytest.fixture(scope="session")
def llm_simulator(openai_server: Proc, smollm2_path: Path, logs_dir: Path) -> Iterator[Proc]:
    """``llm`` mode on the embedded SmolLM2 behind a real OpenAI-compatible server."""
    env = {"SIMULATOR_MODE": "llm", "SIMULATOR_LLM__BACKEND": "openai", "SIMULATOR_LLM__BASE_URL": openai_server.url,
           "SIMULATOR_LLM__MODEL": str(smollm2_path), **LLM_ENV}
    proc = start_service("simulator", env, log_dir=logs_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def corpus_simulator(small_retriever: Proc, logs_dir: Path) -> Iterator[Proc]:
    """``corpus`` mode over the real retriever service."""
    env = {"SIMULATOR_MODE": "corpus", "SIMULATOR_RETRIEVER_URL": small_retriever.url, "SIMULATOR_MAX_K": "8",
           "SIMULATOR_TOTAL_STEPS": "100"}
    proc = start_service("simulator", env, log_dir=logs_dir)
    yield proc
    proc.stop()
