"""What each job kind runs: a typed config and the job's context in, the pipeline's final metrics out.

- ``sft``:       :func:`services.trainer.learn.sft.train_sft` (trajectory records -> a checkpoint)
- ``rl``:        :func:`services.trainer.learn.rl.train_rl` (GRPO / DAPO with episodes on the rollout queue), or
                 with ``engine: "verl"`` :func:`services.trainer.verl.run.prepare` (the verl run directory,
                 validated in verl's config tree, its command recorded in ``result.json``), then launched on
                 the trainer's Ray cluster and followed there (:func:`services.trainer.jobs.cluster.run_on_ray`)
- ``ramp``:      :func:`services.trainer.data.ramp.build_ramp` (MaskSearch RAMP samples from corpus passages)
- ``coldstart``: :func:`services.trainer.data.coldstart.build_coldstart` (trajectories with real retrieval,
                 scripted or by LLM agents kept by the judge: RAMP samples and QA ``train``-part questions ->
                 SFT records)
- ``eval``:      :func:`services.trainer.eval.harness.run_eval` (direct / rag / agent / policy:<ckpt> on the
                 ``eval`` part or any JSONL), every episode naming the model it runs with
- ``simulator_sft``: :func:`services.trainer.learn.simulator_sft.build_examples` + ``sft`` (ZeroSearch's
                 simulator fine-tuning: real retrieval over HTTP of QA ``train``-part questions, labelled
                 useful/noisy by the judge or shared.metrics -> a simulator model folder)
- ``distill``:   :func:`services.trainer.learn.distill.distill` (a teacher's agent episodes on the rollout
                 workers; the correct trajectories -> SFT records for an ``sft`` job); with ``rounds > 1``
                 :func:`services.trainer.jobs.distill_rounds.run_distill_rounds` (self-distillation: distill ->
                 SFT -> eval per round, each round's checkpoint the next round's teacher)

Each writes ``result.json`` (the pipeline's report: file paths for the next job) into the job folder.
Heavy imports (torch, models) happen inside the functions, when a job runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.trainer.data.coldstart import ColdStartConfig
from services.trainer.data.ramp import RampConfig
from services.trainer.jobs.configs import (
    ColdStartJobConfig,
    DistillJobConfig,
    EvalJobConfig,
    RLJobConfig,
    SimulatorSFTJobConfig,
)
from services.trainer.jobs.context import JobContext, numeric
from services.trainer.learn.sft import SFTConfig


def run_sft_job(ctx: JobContext) -> dict[str, Any]:
    from services.trainer.learn.sft import train_sft

    config = ctx.config
    assert isinstance(config, SFTConfig)

    def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
        ctx.report(step, metrics, progress=step / total)

    result = train_sft(config, ctx.dir, on_step=on_step, should_stop=ctx.cancelled)
    ctx.check_cancelled()
    ctx.add_folder(config.checkpoint_name)
    ctx.write_result(result)
    return numeric(result)


def run_rl_job(ctx: JobContext) -> dict[str, Any]:
    from services.trainer.learn.plots import plot_training
    from services.trainer.learn.rl import Rollouts, train_rl
    from services.trainer.learn.trajectories import sample_name

    config = ctx.config
    assert isinstance(config, RLJobConfig)
    if config.engine == "verl":
        return run_verl_job(ctx, config)

    def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
        if (ctx.dir / sample_name(step)).is_file():  # before the step event, so a viewer finds it
            ctx.add_artifact(sample_name(step))
        ctx.report(step, metrics, progress=step / total)

    rollouts = Rollouts(ctx.settings.redis_url, ctx.job_id)
    try:
        result = train_rl(config, ctx.job_id, ctx.dir, rollouts, on_step=on_step, should_stop=ctx.cancelled)
    finally:
        rollouts.close()
    ctx.check_cancelled()
    ctx.add_folder("checkpoint")
    plot_training(ctx.dir / "metrics.jsonl", ctx.artifact_path("curves.png"), title=f"RL {ctx.job_id}")
    ctx.add_artifact("curves.png")
    ctx.write_result(result)
    return numeric(result)


def run_verl_job(ctx: JobContext, config: RLJobConfig) -> dict[str, Any]:
    """Prepare and validate the verl run (the CLI's run directory, under ``verl/``); record its command; launch
    it on the trainer's Ray cluster and follow it there (:mod:`services.trainer.jobs.cluster`)."""
    from services.trainer.jobs.cluster import run_on_ray

    launch = config.launch if config.launch != "auto" else ("ray" if ctx.settings.ray_address else "none")
    if launch == "ray" and not ctx.settings.ray_address and ctx.cluster is None:
        raise ValueError("launch 'ray' needs the trainer's Ray cluster: set TRAINER_RAY_ADDRESS (the head's "
                         "Jobs API, e.g. http://ray-head:8265)")
    if ctx.cluster is not None:  # a restarted trainer attaches to the run it launched before
        run_json = json.loads((ctx.dir / "verl" / "run.json").read_text())
        total = sum(int(s["total_steps"]) for s in run_json["stages"])
        final = run_on_ray(ctx, ctx.dir / "verl", config.prepare_only, total)
    else:
        prepared = _prepare_verl(ctx, config)
        if launch == "none":
            ctx.write_result({**prepared, "launched": False})
            return {"stages": float(len(prepared["stages"])),
                    "train_rows": float(sum(s["train_rows"] for s in prepared["stages"]))}
        total = sum(s["total_steps"] for s in prepared["stages"])
        final = run_on_ray(ctx, ctx.dir / "verl", config.prepare_only, total)
    result = json.loads(ctx.artifact_path("result.json").read_text()) if (ctx.dir / "result.json").is_file() else {}
    ctx.write_result({**result, "launched": True, "cluster": final})
    return {"steps": float(final["steps"])}


def _prepare_verl(ctx: JobContext, config: RLJobConfig) -> dict[str, Any]:
    """The run directory under ``verl/`` (validated in verl's tree), its files as artifacts, ``result.json``."""
    from services.trainer.verl.config import VerlConfig
    from services.trainer.verl.run import prepare
    from shared.models import ModelNotFound, resolve

    try:
        model = str(resolve(config.model))
    except ModelNotFound:  # a hub name: the GPU cluster resolves it
        model = config.model
    services = {"retriever_url": ctx.settings.retriever_url, "simulator_url": ctx.settings.simulator_url,
                "judge_url": ctx.settings.judge_url}
    spec = VerlConfig.model_validate({"model_path": model, **services, **config.verl})
    run = prepare(spec, ctx.dir / "verl")
    for name in ("command.sh", "run.json"):
        ctx.add_artifact(f"verl/{name}")
    for stage in run.stages:
        ctx.add_artifact(str((stage.dir / "overrides.txt").relative_to(ctx.dir)))
        ctx.add_artifact(str(stage.agent_loop.relative_to(ctx.dir)))
    prepared = {"engine": "verl", "recipe": run.recipe, "run_dir": str(run.out_dir), "command": run.script(),
                "commands": run.commands(),
                "stages": [{"name": s.name, "train_rows": s.train_rows, "total_steps": s.total_steps}
                           for s in run.stages]}
    ctx.write_result({**prepared, "launched": False})
    return prepared


def _retriever_url(ctx: JobContext, configured: str | None) -> str:
    """The job config's retriever URL, else the trainer's (``TRAINER_RETRIEVER_URL``); one is required."""
    url = configured or ctx.settings.retriever_url
    if not url:
        raise ValueError(f"{ctx.kind} needs a retriever: set config.retriever_url or TRAINER_RETRIEVER_URL")
    return url


def run_ramp_job(ctx: JobContext) -> dict[str, Any]:
    from services.trainer.data.ramp import build_ramp

    config = ctx.config
    assert isinstance(config, RampConfig)
    if config.out_dir is None:
        config = config.model_copy(update={"out_dir": str(ctx.dir / "ramp")})
    report = build_ramp(config, progress=lambda p: ctx.report(0, {"progress": p}, progress=p))
    ctx.write_result(report)
    return {"samples": float(report.get("samples", 0)), "verbatim_rate": float(report.get("verbatim_rate", 0.0))}


def run_coldstart_job(ctx: JobContext) -> dict[str, Any]:
    from services.trainer.data.coldstart import build_coldstart

    config = ctx.config
    assert isinstance(config, ColdStartJobConfig)
    keys = ctx.settings.service_keys()
    update: dict[str, Any] = {"retriever_url": _retriever_url(ctx, config.retriever_url),
                              "api_key": keys.of("retriever")}  # at run time, never stored
    if config.out_dir is None:
        update["out_dir"] = str(ctx.dir / "coldstart")
    fields = config.model_dump(exclude={"api_key", "llm_api_key", "judge_api_key"})
    if config.method == "agents":
        llm = {**fields["agents"]["llm"], "base_url": config.agents.llm.base_url or ctx.settings.llm_url}
        fields["agents"] = {**fields["agents"], "llm": llm,
                            "judge_url": config.agents.judge_url or ctx.settings.judge_url}
        llm_key = ctx.settings.llm_api_key
        update |= {"llm_api_key": llm_key.get_secret_value() if llm_key else None, "judge_api_key": keys.of("judge")}
    report = build_coldstart(ColdStartConfig.model_validate({**fields, **update}))
    for name in ("coldstart.jsonl", "report.md", "attempts.jsonl"):
        if (ctx.dir / "coldstart" / name).is_file() and config.out_dir is None:
            ctx.add_artifact(f"coldstart/{name}")
    ctx.write_result(report)
    return {"records": float(report["records"]), "keep_rate": float(report["keep_rate"]),
            **{k: float(report[k]) for k in ("attempts", "accepted", "accept_rate", "trajectories_per_hour")},
            **{f"rejected_{k}": float(v) for k, v in report["rejects"].items()}}


def run_eval_job(ctx: JobContext) -> dict[str, Any]:
    from services.trainer.eval.harness import run_eval

    config = ctx.config
    assert isinstance(config, EvalJobConfig)
    out = ctx.dir / "eval"
    report = run_eval(config.datasets, config.methods, ctx.settings.redis_url, out, n=config.n, config=config.eval,
                      model=config.model)
    files = ("report.json", "report.md", "report.png", "predictions.jsonl")
    for name in files:
        if (out / name).is_file():
            ctx.add_artifact(f"eval/{name}")
    ctx.write_result({**report, "files": {n: str(out / n) for n in files}})
    final: dict[str, Any] = {}
    for method, m in report["methods"].items():
        for score in ("cover_em", "acc", "em", "f1", "recall", "answered", "n"):
            final[f"{method}/{score}"] = float(m.get(score, 0.0))
    return final


def run_simulator_sft_job(ctx: JobContext) -> dict[str, Any]:
    from services.trainer.learn.simulator_sft import (
        JudgeLabeller,
        Labeller,
        MetricLabeller,
        build_examples,
        sft,
    )
    from shared.client import JudgeClient, RetrieverClient
    from shared.data import load_split

    config = ctx.config
    assert isinstance(config, SimulatorSFTJobConfig)
    url = _retriever_url(ctx, config.retriever_url)
    label = config.label or ("judge" if ctx.settings.judge_url else "metric")
    if label == "judge" and not ctx.settings.judge_url:
        raise ValueError("label 'judge' needs the trainer's TRAINER_JUDGE_URL (or use label 'metric')")
    ctx.report(0, {"stage": "examples", "label": label}, progress=0.0)

    rows = load_split(config.dataset, "train", config.limit)
    keys = ctx.settings.service_keys()
    searcher = RetrieverClient(url, keys.of("retriever"), timeout_s=120.0)
    judge = (JudgeClient(ctx.settings.judge_url, keys.of("judge")) if label == "judge" and ctx.settings.judge_url
             else None)
    labeller: Labeller = JudgeLabeller(judge) if judge is not None else MetricLabeller()
    try:
        examples = build_examples(rows, searcher, labeller, k=config.k, words=config.words,
                                  sets_per_query=config.sets_per_query)
    finally:
        searcher.close()
        if judge is not None:
            judge.close()
    if not examples:
        raise ValueError(f"no examples: {len(rows)} questions, but no search returned {config.k} documents")
    useful = sum(e.quality == "useful" for e in examples)
    ctx.report(0, {"stage": "train", "examples": len(examples), "useful": useful, "noisy": len(examples) - useful},
               progress=0.1)
    ctx.check_cancelled()

    def on_step(step: int, total: int, loss: float) -> None:
        ctx.report(step, {"loss": loss}, progress=0.1 + 0.9 * step / total)
        ctx.check_cancelled()

    report = sft(examples, config.base_model, ctx.dir / "model", config.finetune_config(), on_step=on_step)
    ctx.add_folder("model")  # weights, tokenizer, train_examples.jsonl, simulator_sft.json
    result = {
        "model": report.out_dir, "examples": report.examples, "useful": report.useful, "noisy": report.noisy,
        "first_loss": report.first_loss, "last_loss": report.last_loss, "steps": report.steps,
        "tokens_trained": report.tokens_trained, "seconds": round(report.seconds, 2), "label": label,
        "files": {"examples": str(Path(report.out_dir) / "train_examples.jsonl"),
                  "report": str(Path(report.out_dir) / "simulator_sft.json")},
    }
    ctx.write_result(result)
    return {"examples": report.examples, "first_loss": report.first_loss, "last_loss": report.last_loss}


def run_distill_job(ctx: JobContext) -> dict[str, Any]:
    from services.trainer.learn.distill import distill
    from services.trainer.rollout.queue import EpisodeQueue

    config = ctx.config
    assert isinstance(config, DistillJobConfig)
    if config.rounds > 1:
        from services.trainer.jobs.distill_rounds import run_distill_rounds

        return run_distill_rounds(ctx, config)

    def on_progress(done: int, total: int, metrics: dict[str, float]) -> None:
        ctx.report(done, metrics, progress=done / total)

    queue = EpisodeQueue(ctx.settings.redis_url)
    try:
        report = distill(config, queue, ctx.job_id, ctx.dir / "distill", on_progress=on_progress,
                         should_stop=ctx.cancelled)
    finally:
        queue.delete_job(ctx.job_id)
        queue.close()
    ctx.check_cancelled()
    for name in ("distill.jsonl", "episodes.jsonl"):
        ctx.add_artifact(f"distill/{name}")
    ctx.write_result(report)
    return {"kept": report["kept"], "keep_rate": report["keep_rate"], "episodes": report["episodes"]}
