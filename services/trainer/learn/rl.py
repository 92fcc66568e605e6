"""RL on the episode queue (``local`` engine): GRPO / DAPO with verl's advantage and loss math.

One step (``v`` = this job's policy version; every request names it, so jobs never share a policy slot)::

    curriculum(step) -> p_noise, RAMP mask stage
    enqueue batch x n EpisodeRequests (group = one prompt, n samples) with policy_version v
    gather results (stale ones, produced by another version, are dropped and re-queued)
    DAPO: drop groups whose rewards are all equal, enqueue fresh prompts to refill
    leave out episodes whose search failed (a backend outage; exclude_failed_search, default on)
    rewards (+ DAPO overlong penalty) -> GRPO advantages     (algos.outcome_advantages)
    recompute log-probs with grad (micro-batches)  -> loss   (algos.policy_loss, + KL to reference)
    AdamW step -> checkpoint policy/v{v+1} -> publish v+1   (the next requests name it; workers load it)
    max_staleness >= 1: step k+1's first round is enqueued (naming v) right after step k's gather, so it is
    generated during step k's update; step k+1 then trains on v's samples with v's recorded log-probs
    keep a few trajectories -> trajectories/step_NNNN.jsonl  (learn/trajectories.py; the dashboard shows them)

Tensors: ``prompt_ids + response_ids`` per episode, right-padded; the response mask is the
worker's loss mask (1 on policy tokens, 0 on ``<information>`` observation tokens; all 1 with
``mask_observations=False``, Search-R1's unmasked ablation), the old
log-probs are the worker's own sampling log-probs (temperature 1).

Resume: a job started again in the same folder (the trainer restarted mid-job) goes on from its last
published ``policy/vN`` (:func:`latest_policy`): the weights of vN, step N-1 next (the optimizer's
moments start afresh), the prompt sampler replayed to where it was; its unfinished episodes are
dropped from the queue and this run's episode ids carry a fresh tag, so no orphan is ever run.

Data hygiene: QA prompts come only from the ``train`` part of the fixed split
(:func:`shared.data.load_split`); a config asking for ``eval`` is refused.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from services.trainer.learn.algos import (
    AlgoSpec,
    informative_groups,
    outcome_advantages,
    overlong,
    policy_loss,
)
from services.trainer.learn.policy import (
    OptimSpec,
    TrainDtype,
    autocast,
    device_of,
    load_policy,
    pad_batch,
    save_checkpoint,
    token_logprobs,
)
from services.trainer.learn.prompts import EpisodeSpec, Prompt, PromptSampler, PromptSource, load_prompts
from services.trainer.learn.rl_curriculum import Curriculum, CurriculumPoint, CurriculumSpec
from services.trainer.learn.rl_metrics import episode_metrics, response_mask, trainable
from services.trainer.learn.trajectories import sample_name, step_samples, write_jsonl
from shared.config import Device, resolve_device
from shared.confine import ModelRef
from shared.models import resolve
from shared.schemas import EpisodeRequest, EpisodeResult, PolicyRef

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- config


class RLConfig(BaseModel):
    """An ``rl`` job."""

    model: ModelRef = "smollm2"  # start policy: embedded name or a checkpoint folder (e.g. an SFT job's)
    prompts: PromptSource = Field(default_factory=PromptSource)
    steps: int = Field(default=4, ge=1, le=100_000)
    batch_size: int = Field(default=4, ge=1, le=4096)  # prompts (groups) per step
    group_size: int = Field(default=4, ge=2, le=64)  # samples per prompt (GRPO n)
    algo: AlgoSpec = Field(default_factory=AlgoSpec)
    optim: OptimSpec = Field(default_factory=lambda: OptimSpec(lr=5e-6))
    micro_batch_size: int = Field(default=4, ge=1, le=256)  # episodes per forward/backward
    train_layers: int | None = Field(default=None, ge=1, le=1024)  # train only the top N blocks (None: every weight)
    dtype: TrainDtype = "auto"  # bf16 autocast for forward/backward where native (fp32 weights)
    device: Device = "auto"  # the policy, its reference and optimizer state: CUDA when visible (auto), else CPU
    episode: EpisodeSpec = Field(default_factory=EpisodeSpec)
    curriculum: CurriculumSpec = Field(default_factory=CurriculumSpec)
    max_refill_rounds: int = Field(default=2, ge=0, le=16)  # DAPO dynamic sampling: extra enqueue rounds per step
    # Accept results this many versions old. >= 1 also pipelines the steps: step k+1's first round is enqueued
    # (naming policy v) before step k's update, so workers generate it while the trainer updates to v+1
    # (one-step off-policy, as verl's and ASearcher's async modes); the ratio then uses the rollout log-probs.
    max_staleness: int = Field(default=0, ge=0, le=8)
    # Leave episodes with a failed search (search_failures > 0: the retriever or simulator was down, the
    # policy read an error message instead of documents) out of the loss; counted as excluded_failed_search.
    exclude_failed_search: bool = True
    # Observation tokens (<information> blocks the search wrote) are left out of the loss (Search-R1's
    # retrieved-token masking; True). False trains on them too, as if the policy had written them (Search-R1's
    # ablation: 7B avg EM .343 unmasked vs .431 masked); their ratio's denominator is then the trainer's own
    # log-prob, since the workers record none for them.
    mask_observations: bool = True
    # The importance ratio's denominator. "trainer": the trainer's own log-probs of the sampled tokens
    # before this step's update (verl's recomputed old_log_prob; with one optimizer step per batch it is
    # the current forward, detached), immune to rollout/trainer numeric mismatch (bf16 workers, another
    # engine). "rollout": the workers' recorded log-probs (needed for stale results). auto: trainer
    # unless stale results are accepted.
    old_logprobs: Literal["auto", "trainer", "rollout"] = "auto"
    step_timeout_s: float = Field(default=900.0, gt=0)  # a step's episodes must all arrive by then
    keep_versions: int = Field(default=2, ge=1, le=64)  # policy checkpoints kept on disk
    trajectory_samples: int = Field(default=8, ge=0, le=64)  # episodes kept per step (trajectories/step_NNNN.jsonl)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        resolve_device(self.device)  # "cuda" on a machine without a GPU is refused at submission
        if self.prompts.kind == "ramp" and not self.prompts.path:
            raise ValueError("prompts.path: a RAMP prompt source needs the samples file (a ramp job's output)")
        if not self.mask_observations and (self.old_logprobs == "rollout" or self.max_staleness > 0):
            raise ValueError("mask_observations=false needs the trainer's old log-probs (old_logprobs trainer or "
                             "auto, max_staleness 0): the workers record none for observation tokens")
        if self.keep_versions <= self.max_staleness:  # workers still generate with a version that old
            raise ValueError(f"keep_versions ({self.keep_versions}) must exceed max_staleness ({self.max_staleness})")
        return self


# --------------------------------------------------------------------------- rollouts


class Rollouts:
    """The episode queue as RL sees it (:class:`services.trainer.rollout.queue.EpisodeQueue`): enqueue a
    step's episodes, gather one fresh result per episode (stale ones are re-queued by the queue), and
    the job's current policy, which every request names (workers load it by its folder)."""

    def __init__(self, redis_url: str, job_id: str):
        from services.trainer.rollout.queue import EpisodeQueue

        self.queue = EpisodeQueue(redis_url)
        self.job_id = job_id
        self.policy = PolicyRef(owner=job_id, version=0, path="")  # set by the first publish

    def publish(self, version: int, path: Path) -> PolicyRef:
        """From now on this job's episodes name ``path`` as their policy, at ``version``."""
        self.policy = PolicyRef(owner=self.job_id, version=version, path=str(path))
        return self.policy

    def run(self, requests: Sequence[EpisodeRequest], max_staleness: int, timeout_s: float) -> list[EpisodeResult]:
        """Enqueue ``requests``; their results in request order (each from a policy at least
        ``current version - max_staleness``; staler ones are re-run with the current policy)."""
        self.enqueue(requests)
        return self.collect(requests, max_staleness, timeout_s)

    def enqueue(self, requests: Sequence[EpisodeRequest]) -> None:
        self.queue.enqueue(requests)

    def collect(self, requests: Sequence[EpisodeRequest], max_staleness: int, timeout_s: float) -> list[EpisodeResult]:
        """The results of ``requests`` enqueued earlier, in request order (the freshness rule of :meth:`run`)."""
        results = self.queue.collect(self.job_id, [r.episode_id for r in requests], self.policy, max_staleness,
                                     timeout_s)
        by_id = {r.episode_id: r for r in results}
        return [by_id[r.episode_id] for r in requests]

    def forget(self) -> None:
        """Drop this job's queued episodes and results (a resumed run's orphans: workers skip them unrun)."""
        self.queue.delete_job(self.job_id)

    def close(self) -> None:
        self.queue.delete_job(self.job_id)
        self.queue.close()


def published_policies(out_dir: Path) -> list[tuple[int, Path]]:
    """The complete ``policy/vN`` folders in a job's folder, oldest first: (N, folder)."""
    return sorted((int(p.name[1:]), p) for p in (out_dir / "policy").glob("v*")
                  if p.name[1:].isdigit() and (p / "config.json").is_file())


def latest_policy(out_dir: Path) -> tuple[int, Path] | None:
    """The newest policy a previous run of this job published, or None."""
    found = published_policies(out_dir)
    return found[-1] if found else None


# --------------------------------------------------------------------------- the trainer


class RLTrainer:
    """Owns the policy, its optimizer and (with KL) the frozen reference; one ``step()`` per update."""

    def __init__(self, config: RLConfig, job_id: str, out_dir: Path, rollouts: Rollouts,
                 resume: tuple[int, Path] | None = None):
        import torch

        self.config = config
        self.job_id = job_id
        self.out_dir = out_dir
        self.rollouts = rollouts
        torch.manual_seed(config.seed)
        self.rng = random.Random(config.seed)
        weights = str(resume[1]) if resume else config.model  # resumed: the last published version's weights
        self.model, self.tokenizer = load_policy(weights, train_layers=config.train_layers, device=config.device)
        self.ref = (load_policy(config.model, trainable=False, device=config.device)[0]
                    if config.algo.kl_coef > 0 else None)
        self.device = device_of(self.model)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optim = torch.optim.AdamW(trained, lr=config.optim.lr, betas=config.optim.betas,
                                       weight_decay=config.optim.weight_decay)
        self.curriculum = Curriculum(config.curriculum, config.steps)
        self.sampler = PromptSampler(load_prompts(config.prompts), config.seed,
                                     mixed=config.curriculum.mask_order == "mixed")
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.version = 1  # the start weights; each update publishes the next
        self.versions: list[Path] = []  # checkpoints this job wrote (the oldest are deleted)
        self.asked: dict[str, EpisodeRequest] = {}  # this step's requests by episode id (for the samples)
        self.ahead: list[EpisodeRequest] = []  # the next step's first round, enqueued already (max_staleness >= 1)
        self.start_path = resolve(config.model)
        self.run_tag = ""  # in episode ids: a resumed run's own, so its predecessor's orphans never match
        if resume is None:
            self.rollouts.publish(self.version, self.start_path)  # workers generate step 0 with the start weights
        else:
            self.version = resume[0]
            self.versions = [p for _, p in published_policies(out_dir)]
            self.run_tag = f"re{uuid.uuid4().hex[:6]}-"
            self.rollouts.publish(self.version, resume[1])

    def _policy_dir(self) -> Path:
        return self.out_dir / "policy" / f"v{self.version}"

    def publish(self, path: Path) -> None:
        self.rollouts.publish(self.version, path)
        self.versions.append(path)
        while len(self.versions) > self.config.keep_versions:
            shutil.rmtree(self.versions.pop(0), ignore_errors=True)

    # -- rollouts --------------------------------------------------------------------------
    def _requests(self, prompts: Sequence[Prompt], point: CurriculumPoint, tag: str) -> list[EpisodeRequest]:
        spec = self.config.episode
        out = []
        for g, prompt in enumerate(prompts):
            group = f"{self.job_id}:{point.step}:{tag}{g}"
            backend = self.curriculum.backend(self.rng)
            for i in range(self.config.group_size):
                out.append(EpisodeRequest(
                    job_id=self.job_id, episode_id=f"{group}:{i}", group_id=group, method="agent",
                    template=prompt.template or spec.template, question=prompt.question,
                    messages=prompt.messages, ground_truth=prompt.ground_truth, policy=self.rollouts.policy,
                    search_backend=backend, p_noise=point.p_noise if backend == "simulator" else None,
                    topk=spec.topk, sampling=spec.sampling, max_turns=spec.max_turns,
                    max_total_tokens=spec.max_total_tokens, obs_max_tokens=spec.obs_max_tokens, reward=spec.reward,
                    meta={"prompt_id": prompt.id, "step": point.step},
                ))
        return out

    def gather(self, point: CurriculumPoint) -> tuple[list[EpisodeResult], int]:
        """``batch x n`` results; DAPO keeps only informative groups and refills. Returns (results, dropped groups)."""
        cfg = self.config
        kept: list[EpisodeResult] = []
        last: list[EpisodeResult] = []
        dropped = 0
        rounds = 1 + (cfg.max_refill_rounds if cfg.algo.dynamic_sampling else 0)
        for r in range(rounds):
            need = cfg.batch_size - len({x.group_id for x in kept})
            if need <= 0:
                break
            if r == 0 and self.ahead:  # enqueued during the previous step's update (pipelined)
                requests, self.ahead = self.ahead, []
                self.asked.update((q.episode_id, q) for q in requests)
                results = self.rollouts.collect(requests, cfg.max_staleness, cfg.step_timeout_s)
            else:
                requests = self._requests(self.sampler.take(need, point), point, tag=f"{self.run_tag}r{r}g")
                self.asked.update((q.episode_id, q) for q in requests)
                results = self.rollouts.run(requests, cfg.max_staleness, cfg.step_timeout_s)
            if not cfg.algo.dynamic_sampling:
                return results, 0
            rewards = [self._reward(x) for x in results]
            keep = informative_groups(rewards, [x.group_id or x.episode_id for x in results])
            dropped += len({x.group_id for x in results}) - len(keep)
            kept.extend(x for x in results if x.group_id in keep)
            last = results
        if not kept:  # every group was all-equal: train on the last round anyway (zero advantages, no update)
            kept = last
        return kept, dropped

    def enqueue_ahead(self, step: int) -> None:
        """Enqueue ``step``'s first round now, naming the current policy (the prompts and curriculum point it
        would have had anyway: the sampler is taken in the same order)."""
        point = self.curriculum.at(step)
        self.ahead = self._requests(self.sampler.take(self.config.batch_size, point), point, tag=f"{self.run_tag}r0g")
        self.rollouts.enqueue(self.ahead)

    def keep_samples(self, step: int, results: Sequence[EpisodeResult]) -> None:
        """A bounded sample of the step's trajectories, decoded: ``trajectories/step_NNNN.jsonl``."""
        if self.config.trajectory_samples == 0:
            return
        rows = step_samples(step, results, self.asked, self.config.trajectory_samples, self._decode)
        write_jsonl(self.out_dir / sample_name(step), rows)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _reward(self, result: EpisodeResult) -> float:
        return result.reward + overlong(len(result.response_ids), self.config.algo)

    # -- update ----------------------------------------------------------------------------
    def update(self, results: Sequence[EpisodeResult]) -> dict[str, float]:
        import torch

        cfg = self.config
        usable, excluded = trainable(results, cfg.exclude_failed_search)
        if not usable:
            return {"pg_loss": 0.0, "trained_episodes": 0.0, "excluded_failed_search": float(excluded)}
        # token layout per episode: prompt + response; the loss covers response positions only
        seqs = [r.prompt_ids + r.response_ids for r in usable]
        resp_masks = [[0] * len(r.prompt_ids) + response_mask(r, cfg.mask_observations) for r in usable]
        old_lps = [[0.0] * len(r.prompt_ids) + list(r.logprobs) for r in usable]
        ids, attn, mask = pad_batch(seqs, resp_masks, self.pad_id)
        # the tokens the workers sampled (and recorded log-probs for): the rollout/trainer gap is measured on them
        sampled = pad_batch(seqs, [[0] * len(r.prompt_ids) + list(r.loss_mask) for r in usable], self.pad_id)[2][:, 1:]
        old = torch.zeros(mask.shape)
        for row, lp in enumerate(old_lps):
            old[row, :len(lp)] = torch.tensor(lp)
        # shift: position t predicts token t+1 -> (batch, len - 1)
        mask, old = mask[:, 1:], old[:, 1:]
        rewards = [self._reward(r) for r in usable]
        groups = [r.group_id or r.episode_id for r in usable]
        adv = outcome_advantages(rewards, mask, groups, cfg.algo)
        n_tokens = int(mask.sum())
        use_trainer_old = cfg.old_logprobs == "trainer" or (cfg.old_logprobs == "auto" and cfg.max_staleness == 0)
        self.model.train()
        self.optim.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        for start in range(0, len(usable), cfg.micro_batch_size):
            sl = slice(start, start + cfg.micro_batch_size)
            width = int(attn[sl].sum(-1).max())
            # this micro-batch on the policy's device (the batch is padded and its advantages computed on CPU)
            m_ids, m_attn = ids[sl, :width].to(self.device), attn[sl, :width].to(self.device)
            m_mask, m_old, m_adv, m_sampled = (t[sl, :width - 1].to(self.device) for t in (mask, old, adv, sampled))
            ref_lp = None
            dev = self.device.type
            if self.ref is not None:
                with torch.no_grad(), autocast(cfg.dtype, dev):
                    ref_lp = token_logprobs(self.ref, m_ids, m_attn, only=m_mask)[0]
            with autocast(cfg.dtype, dev):
                logp, entropy = token_logprobs(self.model, m_ids, m_attn, with_entropy=True, only=m_mask)
            if cfg.algo.entropy_coef == 0 and entropy is not None:
                entropy = entropy.detach()  # logged only
            gap = float(((logp.detach() - m_old).abs() * m_sampled).sum()) / max(int(sampled.sum()), 1)
            if use_trainer_old:
                m_old = logp.detach()
            loss, metrics = policy_loss(m_old, logp, m_adv, m_mask, cfg.algo, ref_logprobs=ref_lp, entropy=entropy,
                                        batch_num_tokens=n_tokens, global_batch_size=len(usable))
            metrics = {**metrics, "rollout_logprob_gap": gap}
            loss.backward()
            share = float(m_mask.sum()) / max(n_tokens, 1)
            for key, value in metrics.items():
                # pg_loss / kl / entropy are already partial sums of the batch mean; ratios are per micro-batch
                sums[key] += value if key in ("pg_loss", "kl", "entropy", "rollout_logprob_gap") else value * share
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm)
        self.optim.step()
        self.model.eval()
        return {**sums, "grad_norm": float(grad_norm), "trained_episodes": float(len(usable)),
                "trained_tokens": float(n_tokens), "excluded_failed_search": float(excluded)}

    def step(self, step: int) -> dict[str, float]:
        point = self.curriculum.at(step)
        t0 = time.monotonic()
        self.asked = {}
        results, dropped = self.gather(point)
        staleness = sum(self.version - r.policy_version for r in results) / max(len(results), 1)
        if self.config.max_staleness >= 1 and step + 1 < self.config.steps:
            self.enqueue_ahead(step + 1)  # the workers generate it with this version while we update
        self.keep_samples(step + 1, results)
        t1 = time.monotonic()
        metrics = self.update(results)
        self.version += 1
        self.publish(save_checkpoint(self.model, self.tokenizer, self._policy_dir()))
        t2 = time.monotonic()
        return {**episode_metrics(results, self._reward), **metrics, **point.metrics(),
                "dropped_groups": float(dropped), "policy_version": float(self.version),
                "rollout_staleness": staleness,  # versions between the samples' policy and the one updated
                "rollout_s": t1 - t0, "update_s": t2 - t1}


def train_rl(config: RLConfig, job_id: str, out_dir: Path, rollouts: Rollouts,
             on_step: Callable[[int, int, dict[str, float]], None] | None = None,
             should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    resume = latest_policy(out_dir)
    trainer = RLTrainer(config, job_id, out_dir, rollouts, resume)
    start_version = 1
    done = min(trainer.version - start_version, config.steps)  # steps a previous run of this job finished
    if resume is not None:
        log.info("rl %s resumes from %s (v%d): %d/%d steps were done", job_id, resume[1], resume[0], done,
                 config.steps)
        rollouts.forget()  # the previous run's unfinished episodes: never run now
        for step in range(done):  # the sampler where it was (dynamic sampling's refills aside)
            trainer.sampler.take(config.batch_size, trainer.curriculum.at(step))
    metrics: dict[str, float] = {}
    for step in range(done, config.steps):
        if should_stop():
            break
        metrics = trainer.step(step)
        log.info("rl %s step %d/%d: reward %.3f accuracy %.3f turns %.2f", job_id, step + 1, config.steps,
                 metrics["reward_mean"], metrics["accuracy"], metrics["turns_mean"])
        if on_step is not None:
            on_step(step + 1, config.steps, metrics)
    final = trainer.versions[-1] if trainer.versions else trainer.start_path
    checkpoint = out_dir / "checkpoint"
    shutil.rmtree(checkpoint, ignore_errors=True)
    shutil.copytree(final, checkpoint)
    return {**metrics, "checkpoint": str(checkpoint), "start_version": start_version,
            "final_version": trainer.version, "resumed_from_version": resume[0] if resume else 0}
