"""Job kinds that wrap the data pipelines and the evaluation harness (they own the work; this
module only gives them a typed job config, a job folder and the trainer's service URLs).

- ``ramp``:      :func:`services.trainer.data.ramp.build_ramp` (MaskSearch RAMP samples from corpus passages)
- ``coldstart``: :func:`services.trainer.data.coldstart.build_coldstart` (scripted trajectories with real
                 retrieval: RAMP samples and QA ``train``-part questions -> SFT records)
- ``eval``:      :func:`services.trainer.evaluate.run_eval` (direct / rag / agent / policy:<ckpt> on the
                 ``eval`` part or any JSONL), with the workers' policy set to the model under test first
- ``simulator_sft``: :func:`services.simulator.finetune.build_examples` + :func:`~services.simulator.finetune.sft`
                 (ZeroSearch's simulator fine-tuning: real retrieval of QA ``train``-part questions, labelled
                 useful/noisy by the judge or shared.metrics -> a simulator model folder)
- ``distill``:   :func:`services.trainer.distill.distill` (a teacher's agent episodes on the rollout workers;
                 the correct trajectories -> SFT records for an ``sft`` job)

Each writes ``result.json`` (the pipeline's report: file paths for the next job) into the job folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.trainer.data.coldstart import ColdStartConfig
from services.trainer.data.ramp import RampConfig
from services.trainer.distill import DistillConfig
from services.trainer.evaluate import EvalConfig, parse_method
from shared.data import DATASETS, canonical_name
from shared.models import check_model_name

if TYPE_CHECKING:
    from services.simulator.finetune import FinetuneConfig
    from services.trainer.engine import JobContext


class ColdStartJobConfig(ColdStartConfig):
    retriever_url: str | None = None  # type: ignore[assignment]  # None: the trainer's TRAINER_RETRIEVER_URL


class EvalJobConfig(BaseModel):
    """An ``eval`` job: methods side by side on QA data (names -> their eval part; paths -> whole file)."""

    datasets: list[str] = Field(default_factory=lambda: ["hotpotqa"], min_length=1)
    methods: list[str] = Field(default_factory=lambda: ["direct", "rag", "agent"], min_length=1)
    n: int | None = Field(default=200, ge=1)  # first n questions of each dataset (None: all)
    model: str = "smollm2"  # the workers' policy for direct / rag / agent (published before the run)
    publish_model: bool = True  # publish ``model`` as the workers' policy first (False: keep the current one)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        for m in v:
            parse_method(m)
        return v


class SimulatorSFTJobConfig(BaseModel):
    """A ``simulator_sft`` job: examples from real retrieval, then SFT of the simulator model."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422, not a silent default

    dataset: str = "hotpotqa"  # QA set whose *train* part gives the questions
    limit: int = Field(default=100, ge=1)  # questions
    k: int = Field(default=5, ge=1, le=20)  # documents per set
    sets_per_query: int = Field(default=2, ge=1)  # document sets per question: ranks 1..k, k+1..2k, ...
    words: int = Field(default=30, ge=4)  # words per document (passages are cut to it; the prompt names it)
    base_model: str = "smollm2"  # embedded name or a model folder to fine-tune
    label: Literal["judge", "metric"] | None = None  # useful/noisy by; None: judge if TRAINER_JUDGE_URL, else metric
    retriever_url: str | None = None  # None: the trainer's TRAINER_RETRIEVER_URL
    epochs: int = Field(default=1, ge=1)  # passes over the examples
    lr: float = Field(default=5e-5, gt=0.0, le=1.0)  # AdamW peak learning rate
    batch_size: int = Field(default=4, ge=1)  # examples per optimizer step
    max_len: int = Field(default=768, ge=64)  # prompt + target tokens
    bf16: bool = True  # bf16 autocast on CPU
    seed: int = 0

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        try:
            return canonical_name(v)
        except ValueError:
            raise ValueError(f"unknown dataset '{v}'; valid: {', '.join(DATASETS)}") from None

    @field_validator("base_model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return check_model_name(v)

    def finetune_config(self) -> FinetuneConfig:
        from services.simulator.finetune import FinetuneConfig

        return FinetuneConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, max_len=self.max_len,
                              bf16=self.bf16, seed=self.seed, words=self.words)


def _write_result(ctx: JobContext, report: dict[str, Any]) -> None:
    from services.trainer.sft import write_result

    write_result(ctx, report)


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
    _write_result(ctx, report)
    return {"samples": float(report.get("samples", 0)), "verbatim_rate": float(report.get("verbatim_rate", 0.0))}


def run_coldstart_job(ctx: JobContext) -> dict[str, Any]:
    from services.trainer.data.coldstart import build_coldstart

    config = ctx.config
    assert isinstance(config, ColdStartJobConfig)
    update: dict[str, Any] = {"retriever_url": _retriever_url(ctx, config.retriever_url)}
    if config.out_dir is None:
        update["out_dir"] = str(ctx.dir / "coldstart")
    report = build_coldstart(ColdStartConfig.model_validate({**config.model_dump(), **update}))
    _write_result(ctx, report)
    return {"records": float(report["records"]), "keep_rate": float(report["keep_rate"])}


def run_eval_job(ctx: JobContext) -> dict[str, Any]:
    from services.trainer.evaluate import run_eval
    from services.trainer.queue import EpisodeQueue
    from shared.models import resolve

    config = ctx.config
    assert isinstance(config, EvalJobConfig)
    if config.publish_model:
        queue = EpisodeQueue(ctx.settings.redis_url)
        try:
            queue.publish_policy(queue.policy_version() + 1, str(resolve(config.model)))
        finally:
            queue.close()
    out = ctx.dir / "eval"
    report = run_eval(config.datasets, config.methods, ctx.settings.redis_url, out, n=config.n, config=config.eval,
                      model=config.model)
    for name in ("report.json", "report.md", "report.png"):
        if (out / name).is_file():
            ctx.add_artifact(f"eval/{name}")
    _write_result(ctx, {**report, "files": {n: str(out / n) for n in ("report.json", "report.md", "report.png")}})
    final: dict[str, Any] = {}
    for method, m in report["methods"].items():
        for score in ("cover_em", "em", "f1", "recall", "n"):
            final[f"{method}/{score}"] = float(m.get(score, 0.0))
    return final


def run_simulator_sft_job(ctx: JobContext) -> dict[str, Any]:
    from services.simulator.finetune import JudgeLabeller, Labeller, MetricLabeller, build_examples, sft
    from services.trainer.sft import register_checkpoint
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
    searcher = RetrieverClient(url, timeout_s=120.0)
    judge = JudgeClient(ctx.settings.judge_url) if label == "judge" and ctx.settings.judge_url else None
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
    register_checkpoint(ctx, "model")  # weights, tokenizer, train_examples.jsonl, simulator_sft.json
    result = {
        "model": report.out_dir, "examples": report.examples, "useful": report.useful, "noisy": report.noisy,
        "first_loss": report.first_loss, "last_loss": report.last_loss, "steps": report.steps,
        "tokens_trained": report.tokens_trained, "seconds": round(report.seconds, 2), "label": label,
        "files": {"examples": str(Path(report.out_dir) / "train_examples.jsonl"),
                  "report": str(Path(report.out_dir) / "simulator_sft.json")},
    }
    _write_result(ctx, result)
    return {"examples": report.examples, "first_loss": report.first_loss, "last_loss": report.last_loss}


def run_distill_job(ctx: JobContext) -> dict[str, Any]:
    from services.trainer.distill import distill
    from services.trainer.queue import EpisodeQueue

    config = ctx.config
    assert isinstance(config, DistillConfig)

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
    _write_result(ctx, report)
    return {"kept": report["kept"], "keep_rate": report["keep_rate"], "episodes": report["episodes"]}


def result_of(job_dir: Path) -> dict[str, Any]:
    """A finished job's ``result.json`` (what it produced)."""
    import json

    return dict(json.loads((job_dir / "result.json").read_text()))
