"""Fixtures every test area shares: a real Redis, a real OpenAI-compatible LLM server, data paths.

Everything runs on loopback and is started once per test session.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import cache_dir, corpus_path
from shared.data import dataset_path, open_text
from shared.processes import Proc, free_port, spawn, start_redis, start_service, wait_http

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def redis_server(logs_dir: Path) -> Iterator[Proc]:
    """A real redis-server (>= 6.2) on a free loopback port; ``.url`` is its redis:// URL."""
    proc = start_redis(log_dir=logs_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: Proc) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from shared.models import resolve

    return resolve("smollm2")


@pytest.fixture(scope="session")
def openai_server(smollm2_path: Path, logs_dir: Path) -> Iterator[Proc]:
    """``transformers serve`` with the embedded SmolLM2: a real OpenAI-compatible server.

    ``.url`` is its base URL; the model name to send is ``str(smollm2_path)``.
    """
    port = free_port()
    exe = Path(sys.executable).parent / "transformers"
    proc = spawn("openai-server", [str(exe), "serve", str(smollm2_path), "--host", "127.0.0.1", "--port", str(port),
                                   "--device", "cpu", "--log-level", "warning"], log_dir=logs_dir)
    proc.url = f"http://127.0.0.1:{port}"
    wait_http(proc, proc.url + "/health", timeout_s=180)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def judge_server(openai_server: Proc, smollm2_path: Path, logs_dir: Path) -> Iterator[Proc]:
    """A judge service whose ``llm`` method asks the session's OpenAI-compatible server (short verdicts, no
    cache); the rule methods (``cover_em``, ...) need no model at all."""
    env = {"JUDGE_LLM__BACKEND": "openai", "JUDGE_LLM__BASE_URL": openai_server.url,
           "JUDGE_LLM__MODEL": str(smollm2_path), "JUDGE_MAX_NEW_TOKENS": "4", "JUDGE_REDIS_URL": "",
           "SEARCHLAB_REDIS_URL": ""}
    proc = start_service("judge", env, log_dir=logs_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def corpus_file() -> Path:
    return corpus_path()


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 500 passages of the real corpus, plus every supporting passage of the first 30
    HotpotQA dev questions (so those questions are answerable from it)."""
    wanted: set[str] = set()
    with open_text(dataset_path("hotpotqa")) as f:
        for i, line in enumerate(f):
            if i >= 30:
                break
            wanted.update(json.loads(line).get("supporting_passage_ids", []))
    out = tmp_path_factory.mktemp("corpus") / "small.jsonl"
    with open_text(corpus_path()) as src, open(out, "w") as dst:
        for i, line in enumerate(src):
            if i < 500 or json.loads(line)["id"] in wanted:
                dst.write(line)
    return out


@pytest.fixture(scope="session")
def small_index(small_corpus: Path) -> Path:
    """The retriever index of ``small_corpus``, built once and reused while the corpus is unchanged."""
    from services.retriever.index import ensure_index

    return ensure_index(small_corpus, cache_dir() / "indexes" / "test-small-corpus")


@pytest.fixture(scope="session")
def small_retriever(small_index: Path, logs_dir: Path) -> Iterator[Proc]:
    """A retriever service (default settings) over ``small_index``, shared by every area's tests and
    never stopped mid-session (a test that needs an outage starts its own)."""
    proc = start_service("retriever", {"RETRIEVER_INDEX_DIR": str(small_index)}, log_dir=logs_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def repo_files() -> list[Path]:
    """Every file a clone of the repository has: tracked and new (not git-ignored) ones."""
    import subprocess

    from shared.config import REPO_ROOT

    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [REPO_ROOT / name for name in listed if name and (REPO_ROOT / name).is_file()]
