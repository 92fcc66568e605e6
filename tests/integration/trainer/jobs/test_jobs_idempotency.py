"""``POST /jobs`` with an ``Idempotency-Key`` over real HTTP, a real trainer and Redis (issue 18): the
client retries a submission whose answer timed out, and without a key that made a second job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared.client import TrainerClient
from shared.processes import Proc, free_port, start_service

pytestmark = pytest.mark.slow

API_KEY = "idem-key"
# an eval job with no workers: it fails after 1 s, so nothing heavy runs
BODY = {"kind": "eval", "config": {"methods": ["direct"], "n": 1, "eval": {"timeout_s": 1}}}


@pytest.fixture(scope="module")
def trainer(redis_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    env = {"TRAINER_API_KEY": API_KEY, "TRAINER_REDIS_URL": redis_url,
           "TRAINER_OUTPUT_DIR": str(tmp_path_factory.mktemp("idem")), "TRAINER_KEY_PREFIX": f"idem-{free_port()}"}
    proc = start_service("trainer", env, log_dir=logs_dir)
    yield proc
    proc.stop()


def post(trainer: Proc, body: dict[str, object], key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {API_KEY}", **({"Idempotency-Key": key} if key else {})}
    return httpx.post(trainer.url + "/jobs", json=body, headers=headers, timeout=30)


def test_the_same_key_returns_the_same_job(trainer: Proc) -> None:
    client = TrainerClient(trainer.url, API_KEY)
    before = len(client.jobs())
    first, again = post(trainer, BODY, "submit-1"), post(trainer, BODY, "submit-1")
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert len(client.jobs()) == before + 1  # one job, not two
    other = post(trainer, BODY, "submit-2")
    assert other.json()["id"] != first.json()["id"]
    assert len(client.jobs()) == before + 2
    reused = post(trainer, {**BODY, "config": {"methods": ["rag"], "n": 1}}, "submit-1")
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"


def test_a_client_retry_after_a_timeout_makes_one_job(trainer: Proc, redis_url: str) -> None:
    reader = TrainerClient(trainer.url, API_KEY)
    before = {j.id for j in reader.jobs()}
    # Redis holds writes for 1.5 s: the trainer receives the submission but cannot answer within the
    # client's 0.3 s, so the client retries (the same request) until it gets an answer
    redis.Redis.from_url(redis_url).execute_command("CLIENT", "PAUSE", "1500", "WRITE")
    impatient = TrainerClient(trainer.url, API_KEY, timeout_s=0.3, max_retries=8, backoff_base_s=0.1,
                              backoff_cap_s=0.3)
    job_id = impatient.submit(str(BODY["kind"]), BODY["config"])  # type: ignore[arg-type]
    created = [j.id for j in reader.jobs() if j.id not in before]
    assert created == [job_id]  # one job, although the trainer got the submission several times
    log = trainer.log_path.read_text()
    assert "POST /jobs repeated with Idempotency-Key" in log


def test_submissions_without_a_key_of_their_own_are_distinct(trainer: Proc) -> None:
    client = TrainerClient(trainer.url, API_KEY)
    first = client.submit(str(BODY["kind"]), BODY["config"])  # type: ignore[arg-type]
    second = client.submit(str(BODY["kind"]), BODY["config"])  # type: ignore[arg-type]
    assert first != second  # a fresh key per submission: the same body twice on purpose is two jobs
    assert client.submit("eval", BODY["config"], idempotency_key="mine") == \
        client.submit("eval", BODY["config"], idempotency_key="mine")  # type: ignore[arg-type]
