"""The eval harness end to end: a JSONL dataset, every method, a real worker, retriever and Redis;
report.md / report.json / report.png, predictions.jsonl (what each method answered, how, and its scores:
the numbers the report averages) and the ``--json`` table."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from services.trainer.eval.harness import main, parse_method
from shared.data import load_split, write_jsonl
from shared.processes import Proc

pytestmark = pytest.mark.slow


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="valid: direct, rag, agent"):
        parse_method("cot")
    assert parse_method("policy:/ckpt/v3") == ("agent", "/ckpt/v3")


def test_eval_runs_every_method_through_the_queue(tmp_path: Path, private_redis: Proc, small_retriever: Proc,
                                                  start_worker: Callable[..., Proc], smollm2_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rows = load_split("hotpotqa", "all", 3)
    data = tmp_path / "tiny.jsonl"
    write_jsonl(data, rows)
    start_worker(private_redis.url, "eval-w", batch_size=8, retriever_url=small_retriever.url)
    methods = f"direct,rag,agent,policy:{smollm2_path}"
    out = tmp_path / "report"
    rc = main(["--dataset", str(data), "--methods", methods, "--redis-url", private_redis.url, "--out", str(out),
               "--max-new-tokens", "8", "--max-turns", "1", "--timeout-s", "600", "--json"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == set(methods.split(","))
    for name, m in report["methods"].items():
        assert m["n"] == 3 and m["errors"] == 0, name
        assert set(m["datasets"]) == {"tiny"}
        assert all(0.0 <= m[s] <= 1.0 for s in ("em", "acc", "cover_em", "f1", "recall"))
        assert m["cover_em"] <= m["acc"]  # whole-token containment is the stricter one
        assert m["answered"] == 1.0, name  # the answer rule: every method answers when the model can
    assert report["config"]["min_answer_tokens"] == 1
    assert set(report["metrics"]) == {"em", "acc", "cover_em", "f1", "recall"}  # which definition each column is
    assert "Search-R1 subem" in report["metrics"]["acc"]
    assert report["methods"]["direct"]["searches"] == 0
    assert report["methods"]["rag"]["searches"] == 1
    md = (out / "report.md").read_text()
    assert "## tiny" in md and "| rag | 3 | 100.0 |" in md and "| direct | 3 | 100.0 |" in md  # n, answered
    assert "| method | n | answered | EM | acc | cover-EM | F1 | recall |" in md
    assert "acc: normalized gold is a substring" in md and "answer turns end after at least 1 non-blank token(s)" in md
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 3 * 4
    by_method: dict[str, list[dict[str, object]]] = {}
    for p in predictions:
        by_method.setdefault(str(p["method"]), []).append(p)
    for name, preds in by_method.items():
        assert [p["id"] for p in preds] == [str(r["id"]) for r in rows], name  # question order
        assert [p["question"] for p in preds] == [r["question"] for r in rows]
        for score in ("em", "acc", "cover_em", "f1", "recall"):  # the same numbers the report averages
            mean = sum(float(p["scores"][score]) for p in preds) / 3  # type: ignore[index]
            assert mean == pytest.approx(report["methods"][name][score]), (name, score)
        for p in preds:
            assert p["gold"] and set(p) >= {"prediction", "turns", "searches", "finish_reason"}
            assert not p["turns"] or p["turns"][0]["role"] == "policy"  # type: ignore[index]
    assert all(p["n_searches"] == 1 for p in by_method["rag"])
    assert all(t["role"] == "policy" for p in by_method["direct"] for t in p["turns"])  # type: ignore[attr-defined]

    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(table["agent"]) >= {"answered", "acc", "cover_em", "em", "f1", "recall"}
