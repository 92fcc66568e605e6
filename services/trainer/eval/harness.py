"""Evaluation harness: run methods over QA datasets through the episode queue and compare them.

    searchlab eval --dataset hotpotqa --dataset 2wiki --methods direct,rag,agent --n 200 --out DIR [--json]
    python -m services.trainer.eval.harness ...   (the same)

A dataset is a name (its ``eval`` part of ``<data>/<name>/dev.jsonl``, the project's fixed split) or
a path to any JSONL of the same schema (taken whole). Methods, all with the same model and retriever
(MaskSearch's baselines, side by side):

- ``direct``            answer without search
- ``rag``               RAG-PE: retrieve once with the question, answer from the top-k documents
- ``agent``             Agent-PE: the prompted multi-turn search agent
- ``policy:<folder>``   the agent loop run by a trained checkpoint

Each method is one job on the queue (``eval-<stamp>-<method>``); rollout workers must be running
(``searchlab up``), or pass ``--workers N`` to start N local workers for the run. Reported per method
and dataset: the answered rate (episodes that ended with a non-empty answer) beside EM, acc, cover-EM, F1
and token recall (``shared.metrics``; the report's header says which definition each column is, e.g. acc
= Search-R1's subem / FlashRAG's acc), mean turns and searches, failed searches and errors. Writes ``report.md``, ``report.json`` and ``report.png`` (bar chart) to ``--out``, and
``predictions.jsonl`` beside them (as FlashRAG keeps its intermediate data): one line per method and question
with the question, gold answers, the prediction, the trajectory's turns (policy / observation) and searches,
and each metric's score, the same numbers the report averages.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from pydantic import BaseModel, Field

from services.trainer.learn.trajectories import Decode, episode_view, tokenizer_decoder, write_jsonl
from services.trainer.rollout.queue import EpisodeQueue
from shared.config import cache_dir
from shared.confine import SafeName
from shared.data import canonical_name, load_questions
from shared.metrics import METRIC_DEFINITIONS, gold_answers
from shared.processes import Proc, spawn
from shared.schemas import (
    MAX_NEW_TOKENS,
    MAX_OBS_TOKENS,
    MAX_TOPK,
    MAX_TOTAL_TOKENS,
    MAX_TURNS,
    EpisodeRequest,
    EpisodeResult,
    EpisodeRewardSpec,
    EpisodeSampling,
    PolicyRef,
    SearchBackendName,
)

log = logging.getLogger(__name__)

BASE_METHODS = ("direct", "rag", "agent")
SCORES = ("em", "acc", "cover_em", "f1", "recall")


class EvalConfig(BaseModel):
    """What every episode of an evaluation run looks like."""

    template: str = "search_r1"  # shared.protocol template of the agent methods
    search_backend: SearchBackendName = "retriever"  # retriever | simulator
    p_noise: float | None = Field(default=None, ge=0.0, le=1.0)  # simulator only
    topk: int = Field(default=3, ge=1, le=MAX_TOPK)  # documents per search
    max_new_tokens: int = Field(default=64, ge=1, le=MAX_NEW_TOKENS)  # per turn
    max_turns: int = Field(default=3, ge=1, le=MAX_TURNS)  # search turns before the forced final answer
    max_total_tokens: int = Field(default=768, ge=16, le=MAX_TOTAL_TOKENS)  # response budget (policy + observation)
    obs_max_tokens: int = Field(default=256, ge=8, le=MAX_OBS_TOKENS)  # each observation (and RAG context) cut to it
    # Every method's answer turn holds EOS and tags back until it has this many non-blank tokens, so a model that
    # would close <answer> at once still answers (an answer with content anyway is unchanged); the same rule for
    # direct, rag, agent and policy. 0 = off (the model may answer nothing, and that scores 0).
    min_answer_tokens: int = Field(default=1, ge=0, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=10.0)  # greedy by default: evaluation is deterministic
    seed: int = 0
    timeout_s: float = Field(default=4 * 3600, gt=0, le=7 * 24 * 3600)  # for the whole run
    metric: str = "f1"  # reward metric (scores are all reported anyway); "llm" asks the judge
    stamp: SafeName = Field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S"))  # in job ids and folders


def parse_method(method: str) -> tuple[str, str | None]:
    """``"agent"`` -> ("agent", None); ``"policy:/ckpt"`` -> ("agent", "/ckpt"); unknown names raise."""
    if method.startswith("policy:"):
        folder = method.split(":", 1)[1]
        if not folder:
            raise ValueError("policy:<checkpoint folder> needs a folder")
        return "agent", folder
    if method not in BASE_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(BASE_METHODS)}, policy:<checkpoint>")
    return method, None


def dataset_label(source: str) -> str:
    try:
        return canonical_name(source)
    except ValueError:
        return Path(source).stem


def load_eval_rows(datasets: Sequence[str], n: int | None) -> dict[str, list[dict[str, Any]]]:
    """Rows per dataset label: a name's ``eval`` part, or a JSONL file whole; the first ``n`` of each."""
    return {dataset_label(d): load_questions(d, "eval", n) for d in datasets}


def job_id_for(config: EvalConfig, method: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in method)[:60]
    return f"eval-{config.stamp}-{slug}"


def build_requests(rows: dict[str, list[dict[str, Any]]], method: str, config: EvalConfig,
                   model: str = "smollm2") -> list[EpisodeRequest]:
    """The episodes of one method; each names its policy: ``model``, or the checkpoint of ``policy:<folder>``."""
    kind, checkpoint = parse_method(method)
    job = job_id_for(config, method)
    policy = PolicyRef(owner=job, version=0, path=checkpoint or model)
    sampling = EpisodeSampling(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                               seed=config.seed, min_answer_tokens=config.min_answer_tokens)
    return [
        EpisodeRequest(
            job_id=job, episode_id=f"{label}:{row['id']}", method=kind, policy=policy,  # type: ignore[arg-type]
            template=config.template,
            question=str(row["question"]), ground_truth=gold_answers(row), search_backend=config.search_backend,
            p_noise=config.p_noise, topk=config.topk, sampling=sampling, max_turns=config.max_turns,
            max_total_tokens=config.max_total_tokens, obs_max_tokens=config.obs_max_tokens,
            reward=EpisodeRewardSpec(metric=config.metric), meta={"dataset": label},
        )
        for label, part in rows.items() for row in part
    ]


# --------------------------------------------------------------------------- aggregation


def summarize(results: Sequence[EpisodeResult]) -> dict[str, float]:
    ok = [r for r in results if r.finish_reason != "error"]
    out: dict[str, float] = {"n": float(len(results)), "errors": float(len(results) - len(ok))}
    for s in SCORES:  # an errored episode scores 0
        out[s] = sum(r.scores.get(s, 0.0) for r in ok) / len(results) if results else 0.0
    out["turns"] = mean(r.turns for r in ok) if ok else 0.0
    out["searches"] = mean(r.searches for r in ok) if ok else 0.0
    out["search_failures"] = float(sum(r.search_failures for r in ok))
    out["answered"] = sum(r.answer is not None for r in ok) / len(results) if results else 0.0
    return out


def aggregate(by_method: dict[str, list[EpisodeResult]]) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    for method, results in by_method.items():
        per_ds: dict[str, list[EpisodeResult]] = defaultdict(list)
        for r in results:
            per_ds[r.episode_id.split(":", 1)[0]].append(r)
        methods[method] = {**summarize(results), "datasets": {d: summarize(rs) for d, rs in sorted(per_ds.items())}}
    return methods


def predictions(by_method: dict[str, list[EpisodeResult]], rows: dict[str, list[dict[str, Any]]],
                template: str, decode_for: Callable[[str], Decode]) -> Iterator[dict[str, Any]]:
    """One record per (method, question), in question order: what was asked, what the model answered, how
    it got there, and its scores (an errored episode scores 0, as in :func:`summarize`)."""
    questions = {f"{label}:{row['id']}": (label, row) for label, part in rows.items() for row in part}
    rank = {episode_id: i for i, episode_id in enumerate(questions)}
    for method, results in by_method.items():
        decode = decode_for(method)
        for r in sorted(results, key=lambda x: rank.get(x.episode_id, len(rank))):
            label, row = questions.get(r.episode_id, (r.episode_id.split(":", 1)[0], {}))
            view = episode_view(r, decode, template)
            failed = r.finish_reason == "error"
            yield {
                "method": method, "dataset": label, "id": str(row.get("id", r.episode_id.split(":", 1)[-1])),
                "question": str(row.get("question", "")), "gold": gold_answers(row) if row else [],
                "prediction": r.answer, "scores": {s: 0.0 if failed else float(r.scores.get(s, 0.0)) for s in SCORES},
                **{k: view[k] for k in ("turns", "searches", "n_turns", "n_searches", "search_failures",
                                        "finish_reason", "error")},
            }


def _decoders(model: str) -> Callable[[str], Decode]:
    """method -> the tokenizer decode of the model it ran with (``policy:<folder>``: that checkpoint's)."""
    cache: dict[str, Decode] = {}

    def decode_for(method: str) -> Decode:
        path = parse_method(method)[1] or model
        if path not in cache:
            cache[path] = tokenizer_decoder(path)
        return cache[path]

    return decode_for


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation {report['stamp']}", "",
             f"Model: `{report['model']}`; retriever top-{report['config']['topk']}; "
             f"{report['config']['max_new_tokens']} new tokens per turn, {report['config']['max_turns']} turns, "
             f"answer turns end after at least {report['config'].get('min_answer_tokens', 0)} non-blank token(s); "
             "scores in %.", "",
             "Columns: answered = episodes that ended with a non-empty answer (a missing answer scores 0 "
             "everywhere); " + "; ".join(METRIC_DEFINITIONS[s] for s in SCORES) + ".", ""]
    datasets = sorted({d for m in report["methods"].values() for d in m["datasets"]})
    for d in datasets:
        lines += [f"## {d}", "", "| method | n | answered | EM | acc | cover-EM | F1 | recall | turns | searches "
                  "| failed searches | errors |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for method, m in report["methods"].items():
            s = m["datasets"].get(d)
            if s is None:
                continue
            scores = " | ".join(f"{100 * s.get(k, 0.0):.1f}" for k in SCORES)
            lines.append(f"| {method} | {int(s['n'])} | {100 * s['answered']:.1f} | {scores} | "
                         f"{s['turns']:.2f} | {s['searches']:.2f} | {int(s['search_failures'])} | {int(s['errors'])} |")
        lines.append("")
    return "\n".join(lines)


def bar_chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(report["methods"])
    datasets = sorted({d for m in report["methods"].values() for d in m["datasets"]})
    fig, axes = plt.subplots(1, 2, figsize=(5 + 2 * len(datasets), 4), sharey=True)
    width = 0.8 / max(1, len(methods))
    for ax, score in zip(axes, ("cover_em", "f1"), strict=True):
        for i, method in enumerate(methods):
            values = [100 * report["methods"][method]["datasets"].get(d, {}).get(score, 0.0) for d in datasets]
            ax.bar([x + i * width for x in range(len(datasets))], values, width, label=method)
        ax.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(datasets))], datasets)
        ax.set_title({"cover_em": "cover-EM (%)", "f1": "F1 (%)"}[score])
    axes[0].legend()
    fig.suptitle(f"{report['model']}: methods side by side")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- the run


def run_eval(datasets: Sequence[str], methods: Sequence[str], redis_url: str, out_dir: Path,
             n: int | None = None, config: EvalConfig | None = None, model: str = "smollm2") -> dict[str, Any]:
    """Enqueue every (method, question) episode, wait for the results, write report.{md,json,png} and
    predictions.jsonl.

    Workers must be consuming ``redis_url``'s queue. Returns the report dict (also ``report.json``).
    """
    config = config or EvalConfig()
    for m in methods:
        parse_method(m)
    rows = load_eval_rows(datasets, n)
    queue = EpisodeQueue(redis_url)
    started = time.monotonic()
    try:
        jobs = {m: build_requests(rows, m, config, model) for m in methods}
        for m, reqs in jobs.items():
            added = queue.enqueue(reqs)
            log.info("eval %s: %d episodes queued as job %s", m, added, job_id_for(config, m))
        by_method: dict[str, list[EpisodeResult]] = {}
        deadline = time.monotonic() + config.timeout_s
        for m, reqs in jobs.items():
            by_method[m] = queue.wait(job_id_for(config, m), len(reqs), max(1.0, deadline - time.monotonic()))
            log.info("eval %s: %d results", m, len(by_method[m]))
    finally:
        queue.close()
    report: dict[str, Any] = {
        "stamp": config.stamp, "model": model, "datasets": {d: len(r) for d, r in rows.items()},
        "config": config.model_dump(), "elapsed_s": time.monotonic() - started,
        "jobs": {m: job_id_for(config, m) for m in methods}, "metrics": {s: METRIC_DEFINITIONS[s] for s in SCORES},
        "methods": aggregate(by_method),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown(report))
    bar_chart(report, out_dir / "report.png")
    write_jsonl(out_dir / "predictions.jsonl", predictions(by_method, rows, config.template, _decoders(model)))
    return report


def start_workers(count: int, redis_url: str, env: dict[str, str], log_dir: Path) -> list[Proc]:
    """Local rollout workers for one run (``--workers N``); stop them with ``Proc.stop()``."""
    return [spawn(f"eval-worker-{i}", [sys.executable, "-m", "services.trainer.rollout.worker"],
                  env={**env, "WORKER_REDIS_URL": redis_url, "WORKER_NAME": f"eval-worker-{i}"}, log_dir=log_dir)
            for i in range(count)]


def _redis_url(arg: str | None) -> str:
    if arg:
        return arg
    if os.environ.get("SEARCHLAB_REDIS_URL"):
        return os.environ["SEARCHLAB_REDIS_URL"]
    from shared.local_cluster import load_state

    state = load_state()
    if state is None or "redis" not in state.urls:
        raise SystemExit("no Redis: pass --redis-url, set SEARCHLAB_REDIS_URL or run `searchlab up`")
    return state.urls["redis"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="searchlab eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", required=True, help="dataset name or JSONL path (repeatable)")
    p.add_argument("--methods", default="direct,rag,agent", help="comma-separated: direct,rag,agent,policy:<dir>")
    p.add_argument("--n", type=int, default=None, help="first N questions of each dataset (default: all)")
    p.add_argument("--model", default="smollm2", help="the model direct / rag / agent run with (name or folder)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: <cache>/eval/<stamp>)")
    p.add_argument("--redis-url", default=None)
    p.add_argument("--workers", type=int, default=0, help="start N local workers for this run")
    p.add_argument("--retriever-url", default=None, help="for --workers (default: SEARCHLAB_RETRIEVER_URL)")
    p.add_argument("--batch-size", type=int, default=8, help="for --workers: episodes generated together")
    p.add_argument("--json", action="store_true", help="also print the per-method scores as JSON")
    for name, field in EvalConfig.model_fields.items():
        if name == "stamp":
            continue
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(field.default) if field.default is not None
                       else float, default=field.default, help=field.description)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = EvalConfig(**{k: getattr(args, k) for k in EvalConfig.model_fields if k != "stamp"})
    redis_url = _redis_url(args.redis_url)
    out = args.out or cache_dir() / "eval" / config.stamp
    workers: list[Proc] = []
    if args.workers:
        retriever = args.retriever_url or os.environ.get("SEARCHLAB_RETRIEVER_URL", "")
        env = {"WORKER_BATCH_SIZE": str(args.batch_size), "WORKER_RETRIEVER_URL": retriever}
        workers = start_workers(args.workers, redis_url, env, out / "logs")
    try:
        report = run_eval(args.dataset, [m.strip() for m in args.methods.split(",") if m.strip()], redis_url, out,
                          args.n, config, model=args.model)
    finally:
        for w in workers:
            w.stop()
    sys.stdout.write(markdown(report) + "\n")
    sys.stdout.write(f"report: {out}/report.md, report.json, report.png, predictions.jsonl\n")
    if args.json:
        table = {m: {s: v[s] for s in ("answered", *SCORES, "turns", "searches")} for m, v in report["methods"].items()}
        sys.stdout.write(json.dumps(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
