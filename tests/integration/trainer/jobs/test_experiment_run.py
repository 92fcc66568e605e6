"""``searchlab experiment`` end to end at the small budget (issue 20 item 3): two searchr1 arms (observation
tokens masked vs trained on) as real rl jobs through the trainer's API, with a real Redis, retriever, rollout
worker and the embedded SmolLM2; one eval job over both; report.md / report.json / report.png with every
arm's row, finite numbers and the answers' length and candidates over training (item 5)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from services.experiments import report as reports
from services.experiments.registry import experiment
from services.experiments.run import run_experiment
from shared.client import TrainerClient
from shared.processes import Proc

pytestmark = pytest.mark.slow


def test_searchr1_two_arms_small_budget(job_client: TrainerClient, private_redis: Proc, small_retriever: Proc,
                                        start_worker: Callable[..., Proc], tmp_path: Path) -> None:
    worker = start_worker(private_redis.url, "exp-worker-0", retriever_url=small_retriever.url, batch_size=8)
    exp = experiment("searchr1", "small", ["em_masked", "em_unmasked"])
    out = tmp_path / "experiment"
    try:
        report = run_experiment(job_client, exp, out, "small")
    except RuntimeError as exc:
        raise AssertionError(f"{exc}\n--- worker\n{worker.log_tail()}") from exc

    for name in ("report.md", "report.json", "report.png", "predictions.jsonl"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "report.json").read_text())
    assert saved["n"] == exp.budget.eval_n and list(saved["arms"]) == ["em_masked", "em_unmasked", "agent"]
    for name, arm in saved["arms"].items():
        for score in ("cover_em", "acc", "em", "f1", "answered"):
            assert arm[score]["n"] == exp.budget.eval_n
            assert math.isfinite(arm[score]["mean"]) and math.isfinite(arm[score]["se"]), (name, score)
        assert math.isfinite(arm["answer_tokens"]) and math.isfinite(arm["candidates"])
    unmasked = saved["arms"]["em_unmasked"]
    assert unmasked["versus"] == "em_masked" and math.isfinite(unmasked["difference"]["f1"]["se"])
    training = unmasked["training"]
    assert training["steps"] == [1] and set(training["series"]) == set(reports.HACKING)
    # the two arms really differ in the knob: the unmasked job was configured so, and both trained
    rl_jobs = {arm: saved["jobs"][arm]["rl"] for arm in ("em_masked", "em_unmasked")}
    assert job_client.job(rl_jobs["em_unmasked"]).config["mask_observations"] is False
    assert job_client.job(rl_jobs["em_masked"]).config.get("mask_observations", True) is True

    text = (out / "report.md").read_text()
    for name in ("em_masked", "em_unmasked", "agent"):
        assert f"| {name} | {exp.budget.eval_n} |" in text
    line = reports.bench_line(report)
    assert line.startswith("BENCH experiment name=searchr1 budget=small") and "em_unmasked_f1=" in line
