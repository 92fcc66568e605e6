"""The end-to-end run, the README's main job: ``searchlab demo [--quick] [--eval-data PATH.jsonl ...]``.

    cluster up (Redis, retriever, judge, simulator, trainer, rollout workers; reused if running)
    -> ramp       RAMP samples from corpus passages (heuristic span selector)
    -> coldstart  scripted trajectories with real retrieval: RAMP samples + HotpotQA *train*-part questions
    -> sft        warm-up of the embedded SmolLM2 on those trajectories (observation tokens masked)
    -> rl         a short GRPO run on HotpotQA *train*-part questions, rollouts by the workers
    -> eval       the trained policy next to direct / rag / agent (same model, same retriever) on the
                  HotpotQA *eval* part (or on --eval-data files)
    -> report     report.md (table + curves), report.json, curves.png; last line:
                  ``BENCH e2e policy_cover_em=... rag_cover_em=... agent_cover_em=... direct_cover_em=...
                  policy_acc=... (rag, agent, direct) policy_answered=... (rag, agent, direct) n=...``
                  (cover_em: whole-token containment, ours; acc: Search-R1 subem / FlashRAG acc)

Every stage is a job on the trainer's API (so it shows in ``GET /jobs`` with events and artifacts).
Sizes: the default finishes in about 30 minutes on 2 idle cores, ``--quick`` in about 10.

    searchlab train rl --config rl.json [--follow]     submit one job to the running cluster
        (kinds: ramp, coldstart, sft, rl, distill, simulator_sft, eval; ``shared.schemas.JobKind``)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, get_args

from services.job_runs import JobRunner, trainer_client
from shared.client import TrainerClient
from shared.config import cache_dir
from shared.keys import ClientKeyEnv, ServiceKeys
from shared.metrics import METRIC_DEFINITIONS
from shared.schemas import JobKind

log = logging.getLogger(__name__)

METHODS = ("policy", "rag", "agent", "direct")
SCORES = ("cover_em", "acc", "em", "f1", "recall", "answered", "n")
TABLE_SCORES = ("cover_em", "acc", "em", "f1", "recall")  # report.md columns after n and answered


@dataclass(frozen=True)
class DemoSizes:
    """How big each stage is."""

    ramp_samples: int  # RAMP samples built from the corpus
    coldstart_ramp: int  # RAMP samples turned into trajectories
    coldstart_qa: int  # HotpotQA train questions tried for trajectories
    sft_steps: int  # optimizer steps of the warm-up (8 sequences each)
    rl_steps: int  # GRPO steps
    rl_batch: int  # questions per step
    rl_group: int  # samples per question
    eval_n: int  # questions per eval dataset (0: all of each)
    max_turns: int = 2  # search turns per episode (training and eval alike; cold-start trajectories match)
    max_new_tokens: int = 96  # per turn (a cold-start final turn quotes its evidence: up to ~80 tokens)
    max_total_tokens: int = 1024  # response budget of an episode
    obs_max_tokens: int = 384  # each <information> block (3 passages are ~360 tokens)
    train_layers: int = 10  # SFT and RL train the top 10 of SmolLM2's 30 blocks (about half the step cost)
    sft_max_length: int = 1024  # longer cold-start records are dropped (at 768, 2 of 3 QA trajectories were)
    max_staleness: int = 0  # RL: 1 generates step k+1 with v_k while v_k+1 is trained (one step off-policy)
    qa: tuple[str, ...] = ("hotpotqa",)  # QA sets whose train part gives cold-start trajectories
    yes_no: bool = False  # cold start: keep yes/no questions whose compared passages were both retrieved
    eval_datasets: tuple[str, ...] = ("hotpotqa",)  # evaluated when no --eval-data is given


QUICK = DemoSizes(ramp_samples=200, coldstart_ramp=40, coldstart_qa=200, sft_steps=16, rl_steps=2, rl_batch=2,
                  rl_group=4, eval_n=30)
DEFAULT = DemoSizes(ramp_samples=1000, coldstart_ramp=100, coldstart_qa=600, sft_steps=48, rl_steps=5, rl_batch=4,
                    rl_group=4, eval_n=200)
# ``--recipe best``: about 45 minutes of jobs on 2 cores (the README's "The best recipe" has its first
# measurement): every multi-hop train part (HotpotQA, 2Wiki, MuSiQue) with its yes/no questions, more RAMP
# trajectories, 64 SFT steps x 8 sequences (593 trajectories built, 353 within sft_max_length), a short GRPO
# run; evaluated on the whole eval part of HotpotQA, 2Wiki and MuSiQue (eval_n 0 = all of each).
BEST = DemoSizes(ramp_samples=1000, coldstart_ramp=150, coldstart_qa=1000, sft_steps=64, rl_steps=3, rl_batch=4,
                 rl_group=4, eval_n=0, qa=("hotpotqa", "2wikimultihopqa", "musique"), yes_no=True,
                 eval_datasets=("hotpotqa", "2wikimultihopqa", "musique"))
RECIPES = {"default": DEFAULT, "quick": QUICK, "best": BEST}


# --------------------------------------------------------------------------- stages


class Demo:
    def __init__(self, client: TrainerClient, sizes: DemoSizes, out_dir: Path, model: str = "smollm2"):
        self.runner = JobRunner(client)
        self.sizes = sizes
        self.out = out_dir
        self.model = model
        self.jobs = self.runner.jobs  # stage -> job id
        self.timings = self.runner.timings  # stage -> seconds

    def run_job(self, stage: str, kind: str, config: dict[str, Any], timeout_s: float = 4 * 3600) -> dict[str, Any]:
        """Submit one job, follow its events into the log, return its ``result.json``."""
        return self.runner.run(stage, kind, config, timeout_s)

    def episode(self) -> dict[str, Any]:
        s = self.sizes
        return {"max_turns": s.max_turns, "max_total_tokens": s.max_total_tokens, "obs_max_tokens": s.obs_max_tokens,
                "topk": 3}

    def run(self, eval_data: list[str] | None) -> dict[str, Any]:
        s = self.sizes
        ramp = self.run_job("ramp", "ramp", {"samples": s.ramp_samples, "selector": "heuristic", "name": "demo",
                                             "parquet": False})
        cold = self.run_job("coldstart", "coldstart", {
            "ramp_path": ramp["files"]["jsonl"], "ramp_limit": s.coldstart_ramp, "qa": list(s.qa),
            "qa_limit": s.coldstart_qa, "topk": 3, "max_qa_searches": s.max_turns, "yes_no": s.yes_no})
        sft = self.run_job("sft", "sft", {
            "data": [cold["files"]["records"]], "model": self.model, "max_steps": s.sft_steps,
            "micro_batch_size": 2, "grad_accum": 4, "max_length": s.sft_max_length, "train_layers": s.train_layers,
            "optim": {"lr": 1e-4, "warmup_steps": 2}})
        episode = self.episode()
        rl = self.run_job("rl", "rl", {
            "model": sft["checkpoint"], "steps": s.rl_steps, "batch_size": s.rl_batch, "group_size": s.rl_group,
            "prompts": {"kind": "qa", "dataset": "hotpotqa"},
            "episode": {**episode, "sampling": {"max_new_tokens": s.max_new_tokens, "temperature": 1.0},
                        "reward": {"kind": "hybrid", "metric": "f1", "format_weight": 0.2}},
            "algo": {"name": "grpo"}, "optim": {"lr": 5e-6}, "micro_batch_size": 2, "train_layers": s.train_layers,
            "max_staleness": s.max_staleness})
        datasets = eval_data or list(s.eval_datasets)
        evaluation = self.run_job("eval", "eval", {
            "datasets": datasets, "n": s.eval_n or None, "model": self.model,
            "methods": ["direct", "rag", "agent", f"policy:{rl['checkpoint']}"],
            "eval": {**episode, "max_new_tokens": s.max_new_tokens, "temperature": 0.0}})
        return self.report(datasets, sft, rl, evaluation)

    # -- report --------------------------------------------------------------------------------
    def report(self, datasets: list[str], sft: dict[str, Any], rl: dict[str, Any],
               evaluation: dict[str, Any]) -> dict[str, Any]:
        from services.trainer.learn.plots import plot_training

        self.out.mkdir(parents=True, exist_ok=True)
        methods: dict[str, dict[str, Any]] = {}
        for name, m in evaluation["methods"].items():
            key = "policy" if name.startswith("policy:") else name
            methods[key] = {k: m.get(k, 0.0) for k in SCORES} | {
                "turns": m.get("turns", 0.0), "searches": m.get("searches", 0.0),
                "datasets": {d: {k: v.get(k, 0.0) for k in SCORES} for d, v in m.get("datasets", {}).items()}}
            methods[key]["n"] = int(methods[key]["n"])
        curves: dict[str, str] = {}
        for stage, name in (("rl", "curves.png"), ("sft", "sft_curves.png")):
            metrics = self.runner.save_artifact(stage, "metrics.jsonl", self.out / f"{stage}_metrics.jsonl")
            curves[stage] = str(plot_training(metrics, self.out / name, title=f"{stage.upper()} {self.jobs[stage]}"))
        report = {
            "datasets": datasets, "sizes": asdict(self.sizes), "model": self.model, "methods": methods,
            "jobs": self.jobs, "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "sft": {k: sft.get(k) for k in ("loss", "examples", "steps", "checkpoint")},
            "rl": {k: rl.get(k) for k in ("reward_mean", "accuracy", "checkpoint", "start_version", "final_version")},
            "curves": curves, "eval_report": evaluation.get("files", {}),
        }
        (self.out / "report.json").write_text(json.dumps(report, indent=2))
        (self.out / "report.md").write_text(markdown(report))
        return report


def _cells(scores: dict[str, Any]) -> str:
    """``answered`` and the table's scores of one row, in %."""
    return " | ".join(f"{100 * scores.get(k, 0.0):.1f}" for k in ("answered", *TABLE_SCORES))


def markdown(report: dict[str, Any]) -> str:
    methods = report["methods"]
    n = max((m["n"] for m in methods.values()), default=0)
    lines = [
        "# searchlab end-to-end run", "",
        f"Model `{report['model']}`: RAMP data -> cold-start SFT -> GRPO -> evaluation on "
        f"{', '.join(report['datasets'])} ({'eval part' if report['datasets'] == ['hotpotqa'] else 'given files'}, "
        f"n = {n}). Training never saw these questions (train/eval split of `shared/data.py`).", "",
        f"Scores in %. answered = ended with a non-empty answer; {'; '.join(METRIC_DEFINITIONS[k] for k in TABLE_SCORES)}.",
        "", "| method | n | answered | cover-EM | acc | EM | F1 | recall | turns | searches |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in METHODS:
        if name in methods:
            m = methods[name]
            lines.append(f"| {name} | {m['n']} | {_cells(m)} | {m['turns']:.2f} | {m['searches']:.2f} |")
    if len(report["datasets"]) > 1:  # the targets are per dataset: one row per dataset and method
        lines += ["", "Per dataset:", "", "| dataset | method | n | answered | cover-EM | acc | EM | F1 | recall |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for dataset in report["datasets"]:
            for name in METHODS:
                d = methods.get(name, {}).get("datasets", {}).get(dataset)
                if d is not None:
                    lines.append(f"| {dataset} | {name} | {int(d.get('n', 0))} | {_cells(d)} |")
    lines += ["", "`policy` = SFT + GRPO checkpoint; `rag` = retrieve once with the question; `agent` = the prompted "
              "search agent; `direct` = no search. Same base model, retriever and turn budget for all.", "",
              "## Training", "",
              f"- SFT: {report['sft'].get('examples')} trajectories, {report['sft'].get('steps')} steps, "
              f"final loss {report['sft'].get('loss')}",
              f"- RL: final step reward {report['rl'].get('reward_mean')}, accuracy {report['rl'].get('accuracy')}, "
              f"policy versions {report['rl'].get('start_version')} -> {report['rl'].get('final_version')}",
              f"- time per stage (s): {report['timings_s']}", "",
              "![RL curves](curves.png)", "", "![SFT curves](sft_curves.png)", ""]
    return "\n".join(lines)


def bench_line(report: dict[str, Any]) -> str:
    methods = report["methods"]
    parts = [f"{name}_{key}={methods.get(name, {}).get(key, 0.0):.4f}"  # cover_em keys first, as before
             for key in ("cover_em", "acc", "em", "f1", "answered") for name in METHODS]
    n = max((m["n"] for m in methods.values()), default=0)
    return "BENCH e2e " + " ".join(parts) + f" n={n}"


# --------------------------------------------------------------------------- entry points


def run_demo(quick: bool = False, eval_data: list[str] | None = None, out_dir: Path | None = None,
             trainer_url: str | None = None, api_key: str | None = None,
             sizes: DemoSizes | None = None, client: TrainerClient | None = None) -> dict[str, Any]:
    """Run every stage against a running cluster (``client``, else the trainer at ``trainer_url`` or
    ``SEARCHLAB_TRAINER_URL``); returns the report (also written to ``out_dir``)."""
    for path in eval_data or []:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--eval-data {path}: no such file")
    if client is None:
        url = trainer_url or os.environ.get("SEARCHLAB_TRAINER_URL")
        if not url:
            raise ValueError("no trainer URL: start the cluster (`searchlab up`) or set SEARCHLAB_TRAINER_URL")
        client = TrainerClient(url, api_key or ClientKeyEnv().keys().of("trainer"), timeout_s=60)
    out = out_dir or cache_dir() / "demo" / time.strftime("%Y%m%d-%H%M%S")
    demo = Demo(client, sizes or (QUICK if quick else DEFAULT), out)
    started = time.monotonic()
    report = demo.run(eval_data)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log.info("report: %s", out / "report.md")
    return report


def main(argv: list[str] | None = None) -> int:
    """``searchlab demo``: bring the cluster up (or reuse it), run the demo, print the table and BENCH line."""
    parser = argparse.ArgumentParser(prog="searchlab demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (about 10 minutes on 2 cores); "
                        "the same as --recipe quick")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                        help="sizes and data: default (about 30 minutes), quick (about 10), best (the recipe being tuned: "
                             "about 45 minutes of jobs, then the whole HotpotQA, 2Wiki and MuSiQue eval parts)")
    parser.add_argument("--eval-data", action="append", default=[], metavar="PATH.jsonl",
                        help="evaluate on this QA JSONL (shared schema) instead of the HotpotQA eval part")
    parser.add_argument("--out", type=Path, help="report folder (default <cache>/demo/<stamp>)")
    parser.add_argument("--keep-up", action="store_true", help="leave the cluster running afterwards")
    parser.add_argument("--max-staleness", type=int, choices=[0, 1], default=0,
                        help="RL: 1 pipelines the steps (step k+1 generated while step k trains); default 0")
    args = parser.parse_args(argv)
    if args.quick and args.recipe not in ("default", "quick"):
        parser.error("--quick is --recipe quick; give one of them")
    sizes = replace(RECIPES["quick" if args.quick else args.recipe], max_staleness=args.max_staleness)
    with trainer_client(keep_up=args.keep_up) as client:
        report = run_demo(args.quick, args.eval_data or None, args.out, client=client, sizes=sizes)
    out = Path(report["curves"]["rl"]).parent
    sys.stdout.write((out / "report.md").read_text() + "\n")
    sys.stdout.write(bench_line(report) + "\n")
    return 0


def train_main(argv: list[str] | None = None) -> int:
    """``searchlab train <kind> [--config JSON|FILE] [--follow]``: submit one job to the running cluster."""
    from shared.local_cluster import load_state

    parser = argparse.ArgumentParser(prog="searchlab train", description="submit a job to the trainer")
    parser.add_argument("kind", choices=list(get_args(JobKind)))
    parser.add_argument("--config", default="{}", help="the job config: inline JSON or a .json file")
    parser.add_argument("--follow", action="store_true", help="print the job's events until it ends")
    args = parser.parse_args(argv)
    raw = Path(args.config).read_text() if Path(args.config).is_file() else args.config
    state = load_state()
    url = os.environ.get("SEARCHLAB_TRAINER_URL") or (state.urls.get("trainer") if state else None)
    key = ClientKeyEnv().keys().over(state.keys() if state else ServiceKeys()).of("trainer")
    if not url:
        sys.stderr.write("no trainer: run `searchlab up` or set SEARCHLAB_TRAINER_URL\n")
        return 2
    client = TrainerClient(url, key)
    job_id = client.submit(args.kind, json.loads(raw))
    sys.stdout.write(job_id + "\n")
    if args.follow:
        for event in client.events(job_id):
            sys.stdout.write(json.dumps(event) + "\n")
        status = client.job(job_id)
        return 0 if status.state == "succeeded" else 1
    return 0
