"""Trajectory distillation (MaskSearch's self-distillation step): a teacher model runs agent episodes on
the rollout workers, and the trajectories whose answer is judged correct become SFT records.

    job config: {"teacher": "<checkpoint folder>", "prompts": {"kind": "qa", "dataset": "hotpotqa"},
                 "n": 100, "keep": "judge"}
    then:       {"kind": "sft", "config": {"data": [<result.json "records">]}}

One round of MaskSearch's self-distillation; a ``distill`` job with ``rounds: K > 1`` runs K of them, each
followed by an SFT and an eval, each checkpoint the next teacher (:mod:`services.trainer.jobs.distill_rounds`).

1. **Prompts** (:func:`services.trainer.learn.rl.load_prompts`, as RL reads them): questions of a QA set's
   ``train`` part (never ``eval``) or RAMP samples; ``n`` of them from the ``first``-th (0: the first ``n``).
2. **Episodes**: ``n x samples_per_prompt`` ``agent`` episodes on the episode queue, each with
   ``policy=<teacher>`` (the workers load the teacher next to their other policies; the published policy is
   left alone), sampled at ``temperature``, with the episode settings of RL
   (:class:`services.trainer.learn.rl.EpisodeSpec`: turns, token budgets, top-k, ``max_new_tokens``).
3. **Filter** (:func:`keeps`): a trajectory is kept only when it ended with a closed answer block and
   its answer scores at least ``min_score``: the LLM judge's score (the episode's answer reward with
   metric ``llm``, scored by the workers' judge) or a rule metric of :mod:`shared.metrics` (the
   episode's ``scores``).
4. **Records** (:func:`trajectory_record`): the response tokens split where the loss mask changes
   (1: the teacher's text -> ``policy`` segment, 0: the environment's -> ``observation``; the same split
   the dashboard shows, :func:`services.trainer.learn.trajectories.segments`), each run
   decoded with the teacher's tokenizer as the workers decode; the prompt is the messages the worker
   rendered. Output: ``distill.jsonl`` (:mod:`services.trainer.data.records` format) and
   ``episodes.jsonl`` (one line per episode: answer, scores, finish reason, kept).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.trainer.data.records import SFTRecord, validate_record, write_records
from services.trainer.learn.prompts import EpisodeSpec, Prompt, PromptSource, load_prompts
from services.trainer.learn.trajectories import Decode, segments, tokenizer_decoder
from services.trainer.rollout.queue import EpisodeQueue
from shared.confine import ModelRef
from shared.metrics import keep_threshold
from shared.protocol import get_template, last_action
from shared.schemas import EpisodeRequest, EpisodeResult, PolicyRef

log = logging.getLogger(__name__)

KeepRule = Literal["judge", "em", "acc", "cover_em", "f1", "recall"]  # judge: the LLM judge; else a shared.metrics name


class DistillConfig(BaseModel):
    """A ``distill`` job."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422, not a silent default

    teacher: ModelRef = "smollm2"  # the model that writes the trajectories: embedded name or a checkpoint folder
    prompts: PromptSource = Field(default_factory=PromptSource)  # QA train part or RAMP samples
    n: int = Field(default=100, ge=1, le=1_000_000)  # prompts: the first n of the source
    samples_per_prompt: int = Field(default=1, ge=1, le=64)  # trajectories per prompt
    temperature: float = Field(default=0.7, ge=0.0)  # the teacher's sampling temperature (0: greedy)
    episode: EpisodeSpec = Field(default_factory=EpisodeSpec)  # turns, token budgets, top-k, max_new_tokens
    keep: KeepRule = "cover_em"  # the filter: judge score, or a rule metric of the answer
    min_score: float | None = Field(default=None, ge=0.0, le=1.0)  # None: 0.5 for judge, 1.0 for a rule metric
    timeout_s: float = Field(default=4 * 3600, gt=0)  # every episode's result must arrive by then

    @model_validator(mode="before")
    @classmethod
    def _one_temperature(cls, data: Any) -> Any:
        """``temperature`` is the one setting; ``episode.sampling.temperature`` may only repeat it."""
        episode = data.get("episode") if isinstance(data, dict) else None
        sampling = episode.get("sampling") if isinstance(episode, dict) else None
        if isinstance(sampling, dict) and "temperature" in sampling:
            wanted = data.get("temperature", cls.model_fields["temperature"].default)
            if sampling["temperature"] != wanted:
                raise ValueError("episode.sampling.temperature: set the teacher's temperature with "
                                 "config.temperature")
        return data

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        # the stored config (and every request) shows the temperature the teacher samples at
        sampling = self.episode.sampling.model_copy(update={"temperature": self.temperature})
        self.episode = self.episode.model_copy(update={"sampling": sampling})
        if self.prompts.kind == "ramp" and not self.prompts.path:
            raise ValueError("prompts.path: a RAMP prompt source needs the samples file (a ramp job's output)")
        return self

    @property
    def threshold(self) -> float:
        return keep_threshold(self.min_score, llm_judge=self.keep == "judge")


# --------------------------------------------------------------------------- episodes


def build_requests(prompts: Sequence[Prompt], config: DistillConfig, job_id: str, teacher: str,
                   ) -> list[EpisodeRequest]:
    """``samples_per_prompt`` agent episodes per prompt, run by ``teacher`` (a model folder)."""
    spec = config.episode
    # the judge filter reads the episode's judge-scored answer reward; rule metrics are always in ``scores``
    reward = spec.reward.model_copy(update={"metric": "llm"}) if config.keep == "judge" else spec.reward
    out = []
    for k, prompt in enumerate(prompts):
        group = f"{job_id}:{k}"  # prompt ids of a user's JSONL need not be unique; the index is
        for i in range(config.samples_per_prompt):
            out.append(EpisodeRequest(
                job_id=job_id, episode_id=f"{group}:{i}", group_id=group, method="agent",
                policy=PolicyRef(owner=f"{job_id}:teacher", path=teacher),
                template=prompt.template or spec.template, question=prompt.question, messages=prompt.messages,
                ground_truth=prompt.ground_truth, topk=spec.topk, sampling=spec.sampling, max_turns=spec.max_turns,
                max_total_tokens=spec.max_total_tokens, obs_max_tokens=spec.obs_max_tokens, reward=reward,
                meta={"prompt_id": prompt.id, "prompt_index": k, "sample": i},
            ))
    return out


# --------------------------------------------------------------------------- filter and records


def judge_score(result: EpisodeResult) -> float | None:
    """The judge's score of the answer: the answer part of a reward with metric ``llm`` (the worker marks
    those with ``judge_failed``); None when the episode was not judged or the judge did not answer."""
    if "judge_failed" not in result.reward_parts or result.reward_parts["judge_failed"]:
        return None
    return float(result.reward_parts.get("answer", 0.0))


def ended_with_answer(result: EpisodeResult, template: str) -> bool:
    """The trajectory's last action is a closed answer block (not a search, not an answer cut off)."""
    if result.finish_reason == "error" or result.answer is None:
        return False
    action = last_action(result.text, template)
    return action is not None and action.kind == "answer"


def keeps(result: EpisodeResult, rule: KeepRule, min_score: float, template: str) -> bool:
    """Whether a trajectory becomes an SFT record: it ended with an answer that scores >= ``min_score``."""
    if not ended_with_answer(result, template):
        return False
    score = judge_score(result) if rule == "judge" else result.scores.get(rule)
    return score is not None and score >= min_score


def trajectory_record(prompt: Prompt, result: EpisodeResult, template: str, decode: Decode,
                      source: str, teacher: str, sample: int = 0) -> SFTRecord | None:
    """The SFT record of one episode (``None`` when it has no trainable shape, e.g. empty policy text)."""
    parts = segments(result, decode)
    messages = prompt.messages or get_template(template).build_messages(prompt.question)
    record = SFTRecord(
        id=f"distill:{prompt.id}#{sample}",
        messages=[dict(m) for m in messages], segments=parts, ground_truth=list(prompt.ground_truth),
        source=source,
        meta={"teacher": teacher, "prompt_id": prompt.id, "episode_id": result.episode_id, "answer": result.answer,
              "scores": result.scores, "reward": result.reward, "turns": result.turns, "searches": result.searches,
              "finish_reason": result.finish_reason})
    try:
        validate_record(record)
    except ValueError:
        return None
    return record


def _source_name(prompts: PromptSource) -> str:
    if prompts.kind == "ramp":
        return "ramp"
    return Path(prompts.path).stem if prompts.path else prompts.dataset


# --------------------------------------------------------------------------- the run


def distill(config: DistillConfig, queue: EpisodeQueue, job_id: str, out_dir: Path,
            on_progress: Callable[[int, int, dict[str, float]], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False, first: int = 0) -> dict[str, Any]:
    """Run the teacher's episodes on ``config.n`` prompts from the ``first``-th on, keep the correct
    trajectories, write ``distill.jsonl``; returns the report."""
    from shared.models import resolve

    started = time.monotonic()
    prompts = load_prompts(config.prompts)[first:first + config.n]
    if not prompts:
        raise ValueError("no prompts to distill")
    teacher = str(resolve(config.teacher))
    decode = tokenizer_decoder(config.teacher)
    source = _source_name(config.prompts)
    requests = build_requests(prompts, config, job_id, teacher)
    by_id = {r.episode_id: (r, prompts[int(r.meta["prompt_index"])]) for r in requests}
    if not queue.workers():
        log.warning("distill %s: no live rollout worker; the episodes wait for one", job_id)
    queue.enqueue(requests)
    log.info("distill %s: %d episodes of %d prompts queued for teacher %s", job_id, len(requests), len(prompts),
             config.teacher)

    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[SFTRecord] = []
    counts = {"episodes": 0, "answered": 0, "errors": 0, "judge_failed": 0, "unusable": 0}
    with open(out_dir / "episodes.jsonl", "w", encoding="utf-8") as episodes:
        progress = lambda: f"{counts['episodes']}/{len(requests)} episode results ({queue.stats()})"  # noqa: E731
        for batch in queue.follow(job_id, config.timeout_s, progress, should_stop):
            for result in batch:
                request, prompt = by_id[result.episode_id]
                counts["episodes"] += 1
                counts["errors"] += result.finish_reason == "error"
                counts["answered"] += ended_with_answer(result, request.template)
                counts["judge_failed"] += bool(result.reward_parts.get("judge_failed"))
                record = None
                if keeps(result, config.keep, config.threshold, request.template):
                    record = trajectory_record(prompt, result, request.template, decode, source, config.teacher,
                                               sample=int(request.meta["sample"]))
                    counts["unusable"] += record is None
                if record is not None:
                    records.append(record)
                episodes.write(json.dumps({
                    "episode_id": result.episode_id, "prompt_id": prompt.id, "answer": result.answer,
                    "ground_truth": prompt.ground_truth, "scores": result.scores, "judge": judge_score(result),
                    "finish_reason": result.finish_reason, "turns": result.turns, "kept": record is not None,
                }, ensure_ascii=False) + "\n")
            if on_progress is not None:
                done = counts["episodes"]
                on_progress(done, len(requests), {"episodes": float(done), "kept": float(len(records)),
                                                  "keep_rate": len(records) / done})
            if counts["episodes"] >= len(requests):
                break
    if counts["judge_failed"]:
        log.warning("distill %s: %d answers were not judged (does every worker have WORKER_JUDGE_URL?); "
                    "they were not kept", job_id, counts["judge_failed"])
    path = out_dir / "distill.jsonl"
    write_records(path, records)
    n = counts["episodes"]
    report: dict[str, Any] = {
        "records": str(path), "episodes": n, "kept": len(records),
        "keep_rate": round(len(records) / n, 4) if n else 0.0, **{k: v for k, v in counts.items() if k != "episodes"},
        "prompts": len(prompts), "first_prompt": first, "teacher": config.teacher, "keep": config.keep,
        "min_score": config.threshold,
        "seconds": round(time.monotonic() - started, 2),
        "files": {"records": str(path), "episodes": str(out_dir / "episodes.jsonl")},
    }
    log.info("distill %s: kept %d of %d trajectories (%d answered) -> %s", job_id, len(records), n,
             counts["answered"], path)
    return report
