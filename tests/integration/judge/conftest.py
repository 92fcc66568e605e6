"""Judge services on loopback: the LLM is the session's real OpenAI-compatible server (SmolLM2),
the cache a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.processes import Proc, start_service

JudgeFactory = Callable[..., Proc]


@pytest.fixture(scope="session")
def judge_env(openai_server: Proc, smollm2_path: Path) -> dict[str, str]:
    """Settings every test judge shares: the openai backend at the session's server, short verdicts."""
    return {
        "JUDGE_LLM__BACKEND": "openai",
        "JUDGE_LLM__BASE_URL": openai_server.url,
        "JUDGE_LLM__MODEL": str(smollm2_path),
        "JUDGE_LLM__MAX_RETRIES": "1",
        "JUDGE_MAX_NEW_TOKENS": "4",
        "JUDGE_REDIS_URL": "",
        "SEARCHLAB_REDIS_URL": "",
    }


@pytest.fixture(scope="session")
def start_judge(judge_env: dict[str, str], logs_dir: Path) -> Iterator[JudgeFactory]:
    """Start a judge with extra ``JUDGE_*`` settings; every judge started is stopped at the end."""
    started: list[Proc] = []

    def start(**settings: str) -> Proc:
        env = {**judge_env, "JUDGE_CACHE_PREFIX": f"test-judge-{uuid.uuid4().hex[:8]}",
               **{f"JUDGE_{k.upper()}": v for k, v in settings.items()}}
        proc = start_service("judge", env, log_dir=logs_dir, timeout_s=120)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def judge_service(start_judge: JudgeFactory, redis_url: str) -> Proc:
    """The main test judge: cached in the session Redis, a small body limit, a long batch window."""
    return start_judge(redis_url=redis_url, max_items="8", max_queue="64", max_body_bytes="16384",
                       batch_wait_ms="400")
