"""``searchlab experiment <name> [--budget small|full] [--arms a,b] [--out DIR] [--keep-up]``.

    for each arm, in order:  its jobs on the trainer (ramp -> coldstart -> sft | rl pretrain -> HotpotQA rl),
                             an earlier identical job (same kind, same filled-in config) reused, not re-run
    one eval job:            policy:<each arm's checkpoint> + the untrained agent, the same HotpotQA eval
                             questions, greedy
    report:                  <cache>/experiments/<name>/<stamp>/report.{md,json,png}; the last stdout line is
                             ``BENCH experiment name=... <arm>_f1=... ...``

The trainer is ``SEARCHLAB_TRAINER_URL`` when set, else the local cluster (brought up like ``searchlab demo``).
Experiments and arms: :mod:`services.experiments.registry`; docs/experiments.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from services.experiments import report as reports
from services.experiments.registry import BUDGETS, EXPERIMENTS, Experiment, experiment, resolve
from services.job_runs import JobRunner, trainer_client
from shared.client import TrainerClient
from shared.config import cache_dir

log = logging.getLogger(__name__)


def run_arms(runner: JobRunner, exp: Experiment) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Every arm's jobs; returns (arm -> stage -> job id, arm -> its final checkpoint)."""
    done: dict[str, tuple[str, dict[str, Any]]] = {}  # kind + filled-in config -> (job id, result)
    jobs: dict[str, dict[str, str]] = {}
    checkpoints: dict[str, str] = {}
    for arm in exp.arms.values():
        results: dict[str, dict[str, Any]] = {}
        jobs[arm.name] = {}
        for spec in arm.jobs:
            config = resolve(spec.config, results)
            key = json.dumps([spec.kind, config], sort_keys=True)
            if key in done:
                job_id, results[spec.stage] = done[key]
                log.info("%s/%s: the same job as %s, reused", arm.name, spec.stage, job_id)
            else:
                label = f"{arm.name}/{spec.stage}"
                results[spec.stage] = runner.run(label, spec.kind, config)
                job_id = runner.jobs[label]
                done[key] = (job_id, results[spec.stage])
            jobs[arm.name][spec.stage] = job_id
        checkpoints[arm.name] = str(results[arm.jobs[-1].stage]["checkpoint"])
    return jobs, checkpoints


def run_experiment(client: TrainerClient, exp: Experiment, out_dir: Path, budget_name: str = "") -> dict[str, Any]:
    """Run ``exp`` on the trainer behind ``client``; write and return its report."""
    started = time.monotonic()
    runner = JobRunner(client)
    jobs, checkpoints = run_arms(runner, exp)
    methods = {arm: f"policy:{path}" for arm, path in checkpoints.items()}
    if len(set(methods.values())) != len(methods):
        raise ValueError(f"two arms ended in the same checkpoint: {methods}")
    methods[reports.REFERENCE] = reports.REFERENCE
    runner.run("eval", "eval", {"datasets": ["hotpotqa"], "n": exp.budget.eval_n, "model": "smollm2",
                                "methods": list(methods.values()), "eval": exp.eval_config()})
    predictions = runner.save_artifact("eval", "eval/predictions.jsonl", out_dir / "predictions.jsonl")
    metrics: dict[str, list[dict[str, Any]]] = {}
    for arm in exp.arms.values():
        label = f"{arm.name}/{arm.jobs[-1].stage}"
        stage_job = jobs[arm.name][arm.jobs[-1].stage]
        runner.jobs.setdefault(label, stage_job)  # a reused job's artifacts are its first run's
        path = out_dir / "arms" / arm.name / "rl_metrics.jsonl"
        metrics[arm.name] = reports.read_jsonl(runner.save_artifact(label, "metrics.jsonl", path))
    report = reports.build(exp, reports.read_jsonl(predictions), methods, metrics)
    report.update({"budget_name": budget_name or "custom", "budget": asdict(exp.budget), "jobs": jobs,
                   "eval_job": runner.jobs["eval"], "checkpoints": checkpoints,
                   "timings_s": {k: round(v, 1) for k, v in runner.timings.items()},
                   "elapsed_s": round(time.monotonic() - started, 1),
                   "files": {"md": str(out_dir / "report.md"), "json": str(out_dir / "report.json"),
                             "png": str(out_dir / "report.png"), "predictions": str(predictions)}})
    reports.plot(report, out_dir / "report.png")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(reports.markdown(report))
    log.info("report: %s", out_dir / "report.md")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="searchlab experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=list(EXPERIMENTS))
    parser.add_argument("--budget", choices=list(BUDGETS), default="small",
                        help="small: CI-sized (minutes); full: what a note reports (about an hour on 2 cores)")
    parser.add_argument("--arms", help="comma-separated arms to run (default: all, in the experiment's order)")
    parser.add_argument("--out", type=Path, help="report folder (default <cache>/experiments/<name>/<stamp>)")
    parser.add_argument("--keep-up", action="store_true", help="leave a cluster this command started running")
    args = parser.parse_args(argv)
    exp = experiment(args.name, args.budget, args.arms.split(",") if args.arms else None)
    out = args.out or cache_dir() / "experiments" / args.name / time.strftime("%Y%m%d-%H%M%S")
    with trainer_client(keep_up=args.keep_up) as client:
        report = run_experiment(client, exp, out, args.budget)
    sys.stdout.write(Path(report["files"]["md"]).read_text() + "\n")
    sys.stdout.write(reports.bench_line(report) + "\n")
    return 0
