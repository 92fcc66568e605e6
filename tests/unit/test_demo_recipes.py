"""``searchlab demo --recipe``: each recipe's stages are jobs the trainer accepts, the best recipe uses what
it says it does, and the report carries EM and F1 per method and per dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services import demo
from services.trainer.jobs.kinds import JOB_KINDS


class Recorded(demo.Demo):
    """The stages' job configs, validated the way ``POST /jobs`` validates them; results are made up."""

    def __init__(self, sizes: demo.DemoSizes, tmp: Path):
        self.sizes, self.out, self.model, self.tmp = sizes, tmp, "smollm2", tmp
        self.configs: dict[str, dict[str, Any]] = {}

    def run_job(self, stage: str, kind: str, config: dict[str, Any], timeout_s: float = 0) -> dict[str, Any]:
        JOB_KINDS[kind].config.model_validate(config)
        self.configs[stage] = config
        ramp = self.tmp / "ramp.jsonl"
        ramp.write_text("")
        return {"files": {"jsonl": str(ramp), "records": str(ramp)}, "checkpoint": "smollm2", "methods": {}}

    def report(self, datasets: list[str], *_: Any) -> dict[str, Any]:
        return {"datasets": datasets}


@pytest.mark.parametrize("recipe", sorted(demo.RECIPES))
def test_every_recipe_is_a_chain_of_valid_jobs(recipe: str, tmp_path: Path) -> None:
    run = Recorded(demo.RECIPES[recipe], tmp_path)
    assert run.run(None)["datasets"] == list(demo.RECIPES[recipe].eval_datasets)
    assert list(run.configs) == ["ramp", "coldstart", "sft", "rl", "eval"]


def test_the_best_recipe_trains_on_every_multi_hop_set_and_evaluates_all_of_each(tmp_path: Path) -> None:
    run = Recorded(demo.BEST, tmp_path)
    run.run(None)
    cold, ev = run.configs["coldstart"], run.configs["eval"]
    assert cold["qa"] == ["hotpotqa", "2wikimultihopqa", "musique"] and cold["yes_no"] is True
    assert ev["datasets"] == ["hotpotqa", "2wikimultihopqa", "musique"] and ev["n"] is None  # all of each
    assert run.configs["sft"]["max_steps"] > demo.DEFAULT.sft_steps
    run = Recorded(demo.BEST, tmp_path)
    run.run(["given.jsonl"])  # --eval-data replaces the eval sets, as in the default demo
    assert run.configs["eval"]["datasets"] == ["given.jsonl"]


def test_quick_and_another_recipe_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        demo.main(["--quick", "--recipe", "best"])
    assert stop.value.code == 2 and "--quick is --recipe quick" in capsys.readouterr().err


def _scores(em: float, f1: float) -> dict[str, Any]:
    base = {"cover_em": em + 0.1, "acc": em + 0.1, "em": em, "f1": f1, "recall": f1, "answered": 1.0, "n": 10,
            "turns": 1.0, "searches": 1.0}
    return {**base, "datasets": {"hotpotqa": {**base, "em": em}, "musique": {**base, "em": em / 2}}}


def test_the_report_gives_em_and_f1_per_method_in_the_bench_line_and_a_row_per_dataset() -> None:
    report = {"model": "smollm2", "datasets": ["hotpotqa", "musique"], "timings_s": {}, "sft": {}, "rl": {},
              "methods": {"policy": _scores(0.2, 0.3), "rag": _scores(0.1, 0.15), "agent": _scores(0.0, 0.1),
                          "direct": _scores(0.0, 0.05)}}
    line = demo.bench_line(report)
    for part in ("policy_em=0.2000", "policy_f1=0.3000", "rag_em=0.1000", "rag_f1=0.1500", "policy_cover_em=0.3000"):
        assert part in line.split()
    md = demo.markdown(report)
    assert "| musique | policy | 10 |" in md and "| hotpotqa | rag | 10 |" in md
