"""Self-distillation rounds (MaskSearch): a ``distill`` job with ``rounds: K > 1``.

    teacher = config.teacher
    for k in 1..K:                                           (round k lives in <job>/round<k>/)
        records_k = distill(teacher, prompts[(k-1)n : kn])   fresh prompts each round, judge/metric-filtered
        ckpt_k    = sft(student, records_1 + ... + records_k) every accepted record so far, from the student
        score_k   = eval(policy:ckpt_k, fixed eval questions) the same questions every round
        teacher   = ckpt_k

Each step reuses its pipeline as is: :func:`services.trainer.learn.distill.distill` (episodes on the rollout
workers, under the round's own queue job ``<job>-r<k>``, so the workers load each round's teacher fresh),
:func:`services.trainer.learn.sft.train_sft` and :func:`services.trainer.eval.harness.run_eval`. A finished
round writes ``round<k>/round.json`` (its row) and reports it (``metrics.jsonl``: ``round``, ``attempts``,
``accepted``, ``accept_rate``, ``records``, ``sft_loss``, ``eval_<score>``); a job restarted with the trainer
skips the rounds it finished and reruns the one it was in. ``result.json``: every row and the last checkpoint.
A round that leaves no accepted record yet trains nothing: its teacher stays the teacher, and the row says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from services.trainer.jobs.configs import DistillJobConfig
from services.trainer.jobs.context import JobContext

log = logging.getLogger(__name__)

EVAL_SCORES = ("cover_em", "acc", "em", "f1", "answered")


def round_dir(ctx: JobContext, k: int) -> Path:
    return ctx.dir / f"round{k}"


def finished_rounds(ctx: JobContext, rounds: int) -> list[dict[str, Any]]:
    """The rows of the rounds a previous run of this job finished, in order (stops at the first missing)."""
    rows = []
    for k in range(1, rounds + 1):
        path = round_dir(ctx, k) / "round.json"
        if not path.is_file():
            break
        rows.append(json.loads(path.read_text()))
    return rows


def run_distill_rounds(ctx: JobContext, config: DistillJobConfig) -> dict[str, Any]:
    from services.trainer.eval.harness import job_id_for, run_eval
    from services.trainer.learn.distill import distill
    from services.trainer.learn.prompts import load_prompts
    from services.trainer.learn.sft import SFTConfig, train_sft
    from services.trainer.rollout.queue import EpisodeQueue

    available = len(load_prompts(config.prompts))
    if available < config.rounds * config.n:
        raise ValueError(f"{config.rounds} rounds of {config.n} fresh prompts need {config.rounds * config.n}; "
                         f"the prompt source has {available}")
    rows = finished_rounds(ctx, config.rounds)
    if rows:
        ctx.log(f"resuming after round {len(rows)} of {config.rounds}")
    teacher = rows[-1]["checkpoint"] if rows else config.teacher
    data = [r["records_file"] for r in rows if r["accepted"]]
    for k in range(len(rows) + 1, config.rounds + 1):
        out = round_dir(ctx, k)
        queue_job = f"{ctx.job_id}-r{k}"
        ctx.log(f"round {k}: distilling prompts {(k - 1) * config.n}..{k * config.n - 1} with teacher {teacher}")
        queue = EpisodeQueue(ctx.settings.redis_url)
        try:
            queue.delete_job(queue_job)  # a rerun round starts clean
            report = distill(config.model_copy(update={"teacher": teacher}), queue, queue_job, out / "distill",
                             should_stop=ctx.cancelled, first=(k - 1) * config.n)
        finally:
            queue.delete_job(queue_job)
            queue.close()
        ctx.check_cancelled()
        if report["kept"]:
            data.append(report["records"])
        row: dict[str, Any] = {
            "round": k, "teacher": teacher, "first_prompt": report["first_prompt"], "attempts": report["episodes"],
            "accepted": report["kept"], "accept_rate": report["keep_rate"], "records_file": report["records"],
        }
        if data:
            ctx.log(f"round {k}: SFT of {config.student or config.teacher} on {len(data)} record file(s)")
            sft = SFTConfig(data=data, model=config.student or config.teacher, checkpoint_name="checkpoint",
                            **config.sft.model_dump())
            trained = train_sft(sft, out, should_stop=ctx.cancelled)
            ctx.check_cancelled()
            row |= {"trained": True, "records": trained["examples"], "sft_steps": trained["steps"],
                    "sft_loss": trained.get("loss"), "checkpoint": trained["checkpoint"]}
        else:
            ctx.log(f"round {k}: no accepted trajectory yet; nothing to train, the teacher stays")
            row |= {"trained": False, "records": 0, "sft_steps": 0, "sft_loss": None, "checkpoint": teacher}
        method = f"policy:{row['checkpoint']}"
        eval_config = config.eval.config.model_copy(update={"stamp": queue_job})
        ctx.log(f"round {k}: evaluating {method}")
        evaluation = run_eval(config.eval.datasets, [method], ctx.settings.redis_url, out / "eval", n=config.eval.n,
                              config=eval_config, model=row["checkpoint"])
        _forget(ctx, job_id_for(eval_config, method))
        scores = evaluation["methods"][method]
        row["eval"] = {s: round(float(scores.get(s, 0.0)), 4) for s in EVAL_SCORES}
        (out / "round.json").write_text(json.dumps(row, indent=2))
        for name in ("distill/distill.jsonl", "distill/episodes.jsonl", "eval/report.json", "round.json"):
            ctx.add_artifact(f"round{k}/{name}")
        ctx.report(k, _numbers(row), progress=k / config.rounds)
        rows.append(row)
        teacher = row["checkpoint"]
    result = {"rounds": rows, "checkpoint": teacher, "records": data, "teacher": config.teacher,
              "student": config.student or config.teacher}
    ctx.write_result(result)
    final: dict[str, Any] = {"rounds": float(len(rows))}
    for row in rows:
        final |= {f"r{row['round']}/{k}": v for k, v in _numbers(row).items() if k != "round"}
    return final


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    """A round's row as the numbers a job reports (``eval_<score>`` for the eval scores)."""
    out = {k: float(row[k]) for k in ("round", "attempts", "accepted", "accept_rate", "records", "sft_steps")}
    if row.get("sft_loss") is not None:
        out["sft_loss"] = float(row["sft_loss"])
    out |= {f"eval_{s}": float(v) for s, v in row["eval"].items()}
    return out


def _forget(ctx: JobContext, queue_job: str) -> None:
    from services.trainer.rollout.queue import EpisodeQueue

    queue = EpisodeQueue(ctx.settings.redis_url)
    try:
        queue.delete_job(queue_job)
    finally:
        queue.close()
