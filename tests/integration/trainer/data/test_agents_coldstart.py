"""The multi-agent cold start for real: a ``coldstart`` job with ``method: "agents"`` through the trainer's API,
its agents on the real OpenAI-compatible server (``transformers serve`` with SmolLM2), the real retriever and
the real judge service. The 135M model rarely gets anything right, so the job test asserts the counts and
the files; the keep path (assembly of accepted attempts, judge rejection of wrong ones) is asserted with
deterministic agent replies against the same real retriever and judge."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.trainer.data.coldstart import qa_rows
from services.trainer.data.coldstart_agents import (
    AgentsConfig,
    AgentTeam,
    agent_records,
    qa_attempt,
    ramp_attempt,
)
from services.trainer.data.ramp import RampConfig, build_ramp, load_samples
from services.trainer.data.records import SFTRecord, read_records, tokenize_record
from shared.client import JudgeClient, RetrieverClient, TrainerClient
from shared.llm import SamplingParams
from shared.processes import Proc

pytestmark = pytest.mark.slow


@pytest.fixture()
def trainer_env(openai_server: Proc, judge_server: Proc) -> dict[str, str]:
    return {"TRAINER_LLM_URL": openai_server.url, "TRAINER_JUDGE_URL": judge_server.url}


@pytest.fixture(scope="module")
def ramp_file(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("agents_ramp")
    build_ramp(RampConfig(corpus=str(small_corpus), samples=6, max_passages=60, out_dir=str(out), seed=3,
                          mask_counts=[1, 2], parquet=False, report=False))
    return out / "ramp.jsonl"


def test_agents_job_reports_every_attempt(job_client: TrainerClient, ramp_file: Path, smollm2_path: Path) -> None:
    agents = {"llm": {"model": str(smollm2_path), "max_new_tokens": 40, "max_concurrency": 4},
              "max_sub_questions": 2, "judge_method": "llm", "batch_size": 4}
    config = {"method": "agents", "ramp_path": str(ramp_file), "ramp_limit": 2, "qa": ["hotpotqa"], "qa_limit": 2,
              "topk": 2, "agents": agents}
    job_id = job_client.submit("coldstart", config)
    status = job_client.wait(job_id, timeout_s=240)
    assert status.state == "succeeded", status.error
    m = status.metrics
    assert m["attempts"] == 4 and 0 <= m["accepted"] <= 4 and m["accepted"] == m["records"]
    assert m["accepted"] + sum(m[f"rejected_{s}"] for s in ("llm_error", "planner", "rewriter", "observer",
                                                            "judge")) == 4
    assert m["accept_rate"] == pytest.approx(m["accepted"] / 4) and m["trajectories_per_hour"] >= 0
    result = json.loads(job_client.artifact(job_id, "result.json"))
    assert result["method"] == "agents" and result["stats"]["ramp_tried"] == 2 and result["stats"]["hotpotqa_tried"] == 2
    assert result["stats"]["llm_calls"] >= 4  # at least every planner call went to the real server
    lines = [json.loads(x) for x in job_client.artifact(job_id, "coldstart/attempts.jsonl").decode().splitlines()]
    assert len(lines) == 4 and all("planner" in x["raw"] or x["rejected"] == "llm_error" for x in lines)
    assert sum(x["accepted"] for x in lines) == m["accepted"]
    assert len(list(read_records(result["files"]["records"]))) == m["accepted"]


def test_agents_config_is_checked_at_submission(job_client: TrainerClient) -> None:
    bad: list[dict[str, Any]] = [
        {"agents": {"planner": "no-such-prompt"}},
        {"agents": {"llm": {"base_url": "http://elsewhere.example:30000"}}},  # not one of the trainer's services
        {"agents": {"max_sub_questions": 1000}},
        {"llm_api_key": "secret"},
        {"method": "agent"},
    ]
    for config in bad:
        response = httpx.post(f"{job_client.base_url}/jobs", json={"kind": "coldstart", "config": {
            "method": "agents", "qa": ["hotpotqa"], **config}}, headers=job_client.headers)
        assert response.status_code == 422, (config, response.text)


class ReplayLLM:
    """Deterministic agents for the keep path: the planner asks the task itself, the rewriter searches it, the
    observer answers what ``answers`` maps the task to (a real LLM's role, played from a script)."""

    model_name = "replay"

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def chat(self, conversations: Sequence[list[dict[str, str]]], sampling: SamplingParams) -> list[str]:
        out = []
        for messages in conversations:
            text = messages[-1]["content"]
            task = next((t for t in self.answers if t in text), "")
            if text.startswith("You plan"):
                out.append(f"Sure.\nQ1: {task[:200]}")
            elif text.startswith("Rewrite"):
                out.append(f"Query: {text.split('Question:')[-1].strip()[:200]}")
            else:
                out.append(f"Clue 1: the results say so.\nAnswer: {self.answers.get(task, 'nothing')}")
        return out


def test_judge_keeps_right_answers_and_records_hold_the_real_retrieval(
        small_retriever: Proc, judge_server: Proc, ramp_file: Path) -> None:
    rows = qa_rows("hotpotqa", 4)
    samples = load_samples(ramp_file)[:2]
    attempts = [qa_attempt(r, "hotpotqa") for r in rows] + [ramp_attempt(s) for s in samples]
    answers = {a.task[:200]: (a.ground_truth[0] if i % 2 == 0 else "certainly not this") for i, a in
               enumerate(attempts[:4])}
    answers |= {samples[0].masked[:200]: " ; ".join(samples[0].spans),
                samples[1].masked[:200]: "one span too many ; " * (samples[1].n_masks + 1)}
    retriever, judge = RetrieverClient(small_retriever.url), JudgeClient(judge_server.url)
    try:
        team = AgentTeam(AgentsConfig(judge_method="cover_em", max_sub_questions=1),
                         ReplayLLM(answers), retriever.retrieve, judge, topk=2)  # type: ignore[arg-type]
        records, stats, lines = agent_records(attempts, team)
    finally:
        retriever.close()
        judge.close()
    verdicts = {x["id"]: x["rejected"] for x in lines}
    assert [verdicts[a.id] for a in attempts] == [None, "judge", None, "judge", None, "observer"]
    assert stats["hotpotqa_kept"] == 2 and stats["ramp_kept"] == 1 and stats["rejected_judge"] == 2
    kept: dict[str, SFTRecord] = {r.id: r for r in records}
    assert set(kept) == {attempts[0].id, attempts[2].id, attempts[4].id}
    for a in (attempts[0], attempts[2], attempts[4]):
        record = kept[a.id]
        assert record.messages == a.messages and record.meta["judge_score"] == 1.0
        query = record.meta["queries"][0]
        hits = RetrieverClient(small_retriever.url).retrieve([query], topk=2)[0]
        assert record.meta["retrieved_ids"] == [[h.document.id for h in hits]]  # what the retriever returned
        observation = record.segments[1].text
        assert observation.startswith("\n\n<information>Doc 1(Title: ") and hits[0].document.contents.split("\n")[1][:40] in observation
        assert record.segments[-1].text.endswith(f"<answer> {a.answer} </answer>")
    assert kept[attempts[4].id].ground_truth == samples[0].spans


def test_kept_records_tokenize_like_scripted_ones(smollm2_path: Path) -> None:
    from transformers import AutoTokenizer

    from services.trainer.data.coldstart_agents import assemble
    from shared.schemas import Document, Hit

    a = qa_attempt({"id": "x", "question": "Who?", "answer": "Me"}, "hotpotqa")
    a.sub_questions, a.queries, a.answer = ["Who?"], ["who"], "Me"
    a.hits = [[Hit(document=Document(id="d", contents="\"T\"\nIt was me."), score=1.0)]]
    t = tokenize_record(assemble(a), AutoTokenizer.from_pretrained(str(smollm2_path)))
    for start, end, role in t.segment_bounds:
        assert set(t.loss_mask[start:end]) == ({1} if role == "policy" else {0})
