"""The experiment registry (issue 20 item 3): every arm of every experiment, at every budget, is a chain of
job configs the trainer accepts (validated offline against each kind's pydantic config), and the arms of
one experiment get the same compute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.experiments.registry import BUDGETS, EXPERIMENTS, experiment, resolve
from services.trainer.jobs.kinds import JOB_KINDS


def stand_ins(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """What earlier stages' result.json would hold: files that exist, a model the trainer knows."""
    samples, records = tmp_path / "ramp.jsonl", tmp_path / "records.jsonl"
    samples.write_text("{}\n")
    records.write_text("{}\n")
    return {"ramp": {"files": {"jsonl": str(samples)}}, "coldstart": {"files": {"records": str(records)}},
            "sft": {"checkpoint": "smollm2"}, "pretrain": {"checkpoint": "smollm2"}}


@pytest.mark.parametrize("budget", list(BUDGETS))
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_arm_builds_valid_job_configs(name: str, budget: str, tmp_path: Path) -> None:
    exp = experiment(name, budget)
    results = stand_ins(tmp_path)
    for arm in exp.arms.values():
        stages = [j.stage for j in arm.jobs]
        assert len(set(stages)) == len(stages), arm.name
        assert arm.jobs[-1].kind == "rl", arm.name  # the evaluated checkpoint is a HotpotQA rl job's
        final = arm.jobs[-1].config
        assert final["prompts"]["kind"] == "qa" and final["prompts"]["dataset"] == "hotpotqa"
        for job in arm.jobs:
            JOB_KINDS[job.kind].config.model_validate(resolve(job.config, results))
    assert exp.eval_config()["temperature"] == 0.0


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_arms_get_the_same_compute(name: str) -> None:
    exp = experiment(name, "full")
    b = exp.budget
    for arm in exp.arms.values():
        final = arm.jobs[-1].config
        assert (final["steps"], final["batch_size"], final["group_size"]) == (b.rl_steps, b.batch_size, b.group_size)
        pretraining = [j for j in arm.jobs[:-1] if j.kind in ("rl", "sft")]
        for job in pretraining:  # every pre-training arm adds the same steps' worth
            if job.kind == "rl":
                assert (job.config["steps"], job.config["batch_size"] * job.config["group_size"]) == (
                    b.pretrain_steps, b.episodes_per_step)
            else:
                c = job.config
                assert (c["max_steps"], c["micro_batch_size"] * c["grad_accum"]) == (
                    b.pretrain_steps, b.episodes_per_step)
        others = {k: v for k, v in final.items() if k not in ("model", "episode", "curriculum", "mask_observations")}
        baseline = {k: v for k, v in exp.arms[exp.baseline].jobs[-1].config.items() if k in others}
        assert others == baseline, arm.name  # steps, sizes, optimizer, prompts and seed never differ


def test_each_arm_turns_its_own_knob() -> None:
    s = {name: arm.jobs[-1].config for name, arm in experiment("searchr1", "small").arms.items()}
    assert s["em_unmasked"]["mask_observations"] is False and "mask_observations" not in s["em_masked"]
    assert [s[a]["episode"]["reward"]["metric"] for a in ("em_masked", "f1", "recall", "judge")] == [
        "em", "f1", "recall", "llm"]
    z = {name: arm.jobs[-1].config["curriculum"] for name, arm in experiment("zerosearch", "small").arms.items()}
    assert z["retriever"] == {} and z["simulator"]["search_backend"] == "simulator"
    assert z["constant_noise"]["noise"]["start"] == z["constant_noise"]["noise"]["end"]
    assert z["mix"]["search_backend"] == "mix"
    m = experiment("masksearch", "small").arms
    assert m["ramp_rl_mixed"].jobs[1].config["curriculum"]["mask_order"] == "mixed"
    assert m["ramp_rl_ppl"].jobs[0].config["strategy"] == "ppl" and m["ramp_rl"].jobs[0].config["strategy"] == "random"
    assert [j.kind for j in m["ramp_sft"].jobs] == ["ramp", "coldstart", "sft", "rl"]
    assert m["ramp_rl_mixed"].versus == "ramp_rl" and experiment("masksearch").versus("ramp_sft") == "rl"


def test_choosing_arms_keeps_comparisons_inside_the_choice() -> None:
    exp = experiment("masksearch", "small", ["ramp_rl_ppl", "ramp_rl", "rl"])
    assert list(exp.arms) == ["rl", "ramp_rl", "ramp_rl_ppl"]  # the experiment's order
    assert exp.versus("ramp_rl_ppl") == "ramp_rl"
    alone = experiment("masksearch", "small", ["ramp_rl_ppl", "ramp_sft"])
    assert alone.baseline == "ramp_sft" and alone.versus("ramp_rl_ppl") == "ramp_sft"


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="masksearch, zerosearch, searchr1"):
        experiment("nope")
    with pytest.raises(ValueError, match="small, full"):
        experiment("searchr1", "huge")
    with pytest.raises(ValueError, match="em_masked"):
        experiment("searchr1", "small", ["f2"])


def test_references_are_filled_from_earlier_results() -> None:
    config = {"model": "@sft.checkpoint", "data": ["@coldstart.files.records"], "steps": 3}
    out = resolve(config, {"sft": {"checkpoint": "/ck"}, "coldstart": {"files": {"records": "/r.jsonl"}}})
    assert out == {"model": "/ck", "data": ["/r.jsonl"], "steps": 3}
    with pytest.raises(ValueError, match="no earlier stage 'sft'"):
        resolve(config, {})
    with pytest.raises(ValueError, match="has no 'records'"):
        resolve(config, {"sft": {"checkpoint": "/ck"}, "coldstart": {"files": {}}})
