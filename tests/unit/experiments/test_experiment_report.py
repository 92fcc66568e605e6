"""An experiment report from per-question predictions: every arm's row with mean ± SE, the paired
difference with its comparison arm, the answers' length and candidates, the PNG and the BENCH line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from services.experiments import report as reports
from services.experiments.registry import experiment


def rows(method: str, f1: list[float], predictions: list[str | None]) -> list[dict[str, Any]]:
    return [{"method": method, "dataset": "hotpotqa", "id": f"q{i}", "prediction": p,
             "scores": {"cover_em": float(s == 1.0), "acc": float(s == 1.0), "em": float(s == 1.0), "f1": s,
                        "recall": s}}
            for i, (s, p) in enumerate(zip(f1, predictions, strict=True))]


def test_report_rows_errors_and_differences(tmp_path: Path) -> None:
    exp = experiment("searchr1", "small", ["em_masked", "recall"])
    predictions = (rows("policy:/a", [1.0, 0.0, 0.5, 1.0], ["Paris", None, "Rome or Milan", "Oslo"])
                   + rows("policy:/b", [1.0, 1.0, 0.5, 1.0], ["Paris", "Bern, Basel, Zurich", "Rome", "Oslo"])
                   + rows("agent", [0.0, 0.0, 0.0, 1.0], ["x", "y", None, "Oslo"]))
    metrics = {"em_masked": [{"step": 1, "reward_mean": 0.2, "f1": 0.1, "answer_tokens_mean": 2.0,
                              "answer_candidates_mean": 1.0, "multi_candidate_rate": 0.0}],
               "recall": [{"step": 1, "reward_mean": 0.3, "answer_tokens_mean": 2.0, "answer_candidates_mean": 1.0},
                          {"step": 2, "reward_mean": 0.6, "answer_tokens_mean": 6.0, "answer_candidates_mean": 2.5}]}
    report = reports.build(exp, predictions, {"em_masked": "policy:/a", "recall": "policy:/b", "agent": "agent"},
                           metrics)
    a, b = report["arms"]["em_masked"], report["arms"]["recall"]
    assert report["n"] == 4 and a["f1"]["n"] == 4
    assert a["cover_em"]["mean"] == 0.5 and a["cover_em"]["se"] == pytest.approx(math.sqrt(0.25 / 4))
    assert a["answered"]["mean"] == 0.75
    assert a["candidates"] == pytest.approx((1 + 2 + 1) / 3) and b["candidates"] == pytest.approx((1 + 3 + 1 + 1) / 4)
    assert a["difference"] is None and b["versus"] == "em_masked"
    assert b["difference"]["f1"]["mean"] == pytest.approx(0.25) and b["difference"]["f1"]["se"] > 0
    assert b["training"]["last"]["answer_tokens_mean"] == 6.0 and b["training"]["series"]["answer_candidates_mean"] == [
        1.0, 2.5]
    assert "training" not in report["arms"]["agent"]
    assert reports.build(exp, predictions, {"em_masked": "policy:/a", "recall": "policy:/b"}, metrics) == {
        **report, "arms": {k: v for k, v in report["arms"].items() if k != "agent"}}  # seeded: deterministic

    report.update({"budget_name": "small", "budget": exp.budget.__dict__, "jobs": {}, "timings_s": {},
                   "files": {"png": str(tmp_path / "report.png")}})
    text = reports.markdown(report)
    for arm in ("em_masked", "recall", "agent"):
        assert f"| {arm} | 4 |" in text
    assert "+25.0 ±" in text and "2.000 -> 6.000" in text  # the recall arm's answers grew over training
    assert reports.plot(report, tmp_path / "report.png").stat().st_size > 0
    line = reports.bench_line(report)
    assert line.startswith("BENCH experiment name=searchr1 budget=small n=4 ") and "recall_f1=0.8750" in line


def test_arms_must_share_their_questions() -> None:
    exp = experiment("searchr1", "small", ["em_masked", "f1"])
    predictions = rows("policy:/a", [1.0, 0.0], ["a", "b"]) + rows("policy:/b", [1.0], ["a"])
    with pytest.raises(ValueError, match="other questions"):
        reports.build(exp, predictions, {"em_masked": "policy:/a", "f1": "policy:/b"}, {})
