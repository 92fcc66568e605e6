"""Our use of verl's core RL algorithms (DESIGN.md §5): advantages, policy loss, KL, DAPO's filters.

The math is verl's (``verl.trainer.ppo.core_algos``), not ours; this module only turns episode
results into the tensors verl expects and picks the settings of each algorithm:

- ``grpo``: group-normalized outcome advantages (``compute_grpo_outcome_advantage``), symmetric
  PPO clip 0.2, token-mean loss;
- ``dapo``: the same advantages, decoupled clip (``clip_ratio_low`` 0.2, ``clip_ratio_high`` 0.28),
  token-mean loss, dynamic sampling (groups whose rewards are all equal carry no signal and are
  dropped; the caller refills) and the soft overlong penalty (``shared.rewards.overlong_penalty``).

Tensors are ``(batch, response_length)``, right-padded; ``response_mask`` is 1 on the policy's own
tokens and 0 on observation tokens (``<information>`` blocks) and padding, so neither contributes to
the loss, the KL or the entropy.

verl is imported lazily: it takes seconds, and the jobs API does not need it to start.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, model_validator

from shared.rewards import overlong_penalty

if TYPE_CHECKING:
    import torch

AlgoName = Literal["grpo", "dapo"]
CLIP_HIGH = {"grpo": 0.2, "dapo": 0.28}


class OverlongSpec(BaseModel):
    """DAPO's soft overlong punishment over the response length in tokens."""

    max_length: int = Field(default=512, ge=1)  # at or past it the penalty is -penalty_factor
    cache_length: int = Field(default=128, ge=0)  # window before max_length where it grows linearly
    penalty_factor: float = Field(default=1.0, ge=0.0)


class AlgoSpec(BaseModel):
    """Which RL algorithm and its knobs; unset knobs take the algorithm's published defaults."""

    name: AlgoName = "grpo"
    adv_estimator: str = "grpo"  # a verl advantage-estimator name (register_adv_est registry)
    norm_adv_by_std: bool = True  # GRPO divides by the group std; False is Dr. GRPO
    policy_loss: str = "vanilla"  # a verl policy-loss name (register_policy_loss registry)
    clip_ratio_low: float = Field(default=0.2, gt=0.0, lt=1.0)
    clip_ratio_high: float | None = Field(default=None, gt=0.0)  # None: 0.2 (grpo) / 0.28 (dapo)
    clip_ratio_c: float = Field(default=3.0, gt=1.0)  # dual-clip bound for negative advantages
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                           "seq-mean-token-sum-norm"] = "token-mean"
    kl_coef: float = Field(default=0.0, ge=0.0)  # > 0 adds kl_coef * KL(policy || reference) to the loss
    kl_type: str = "low_var_kl"  # verl kl_penalty name: kl | abs | mse | low_var_kl | k3 ...
    entropy_coef: float = Field(default=0.0, ge=0.0)  # > 0 subtracts entropy_coef * entropy from the loss
    dynamic_sampling: bool | None = None  # None: on for dapo; drop groups with all-equal rewards
    overlong: OverlongSpec | None = None  # DAPO overlong penalty (None: off)

    @model_validator(mode="after")
    def _defaults(self) -> AlgoSpec:
        if self.clip_ratio_high is None:
            self.clip_ratio_high = CLIP_HIGH[self.name]
        if self.dynamic_sampling is None:
            self.dynamic_sampling = self.name == "dapo"
        return self

    def actor_config(self, batch_num_tokens: int | None = None, global_batch_size: int | None = None,
                     rollout_n: int = 1) -> Any:
        """verl's ``ActorConfig`` carrying our clip settings and the global batch size used by
        ``agg_loss`` (so gradient accumulation over micro-batches sums to the full-batch loss)."""
        from verl.workers.config import ActorConfig

        info: dict[str, int] = {"dp_size": 1}
        if batch_num_tokens is not None:
            info["batch_num_tokens"] = batch_num_tokens
        if global_batch_size is not None:
            info["global_batch_size"] = global_batch_size
        return ActorConfig(strategy="fsdp", rollout_n=rollout_n, ppo_micro_batch_size_per_gpu=1,
                           clip_ratio=self.clip_ratio_low, clip_ratio_low=self.clip_ratio_low,
                           clip_ratio_high=float(self.clip_ratio_high or CLIP_HIGH[self.name]),
                           clip_ratio_c=self.clip_ratio_c, loss_agg_mode=self.loss_agg_mode,
                           global_batch_info=info)


# --------------------------------------------------------------------------- advantages


def outcome_advantages(rewards: Sequence[float], response_mask: torch.Tensor, group_ids: Sequence[str],
                       spec: AlgoSpec) -> torch.Tensor:
    """Per-token advantages ``(batch, response_length)`` from one scalar reward per episode.

    The reward sits on the last policy token (verl's token-level reward layout); the estimator
    (GRPO by default) normalizes it within each group and spreads it over the response mask.
    """
    import numpy as np
    import torch
    from verl.trainer.ppo import core_algos

    mask = response_mask.float()
    token_rewards = torch.zeros_like(mask)
    for row, reward in enumerate(rewards):
        positions = mask[row].nonzero()
        if len(positions):
            token_rewards[row, int(positions[-1])] = float(reward)
    index = np.array(list(group_ids), dtype=object)
    fn = core_algos.get_adv_estimator_fn(spec.adv_estimator)
    kwargs: dict[str, Any] = {"token_level_rewards": token_rewards, "response_mask": mask, "index": index}
    if spec.adv_estimator in ("grpo", "grpo_vectorized"):
        kwargs["norm_adv_by_std_in_grpo"] = spec.norm_adv_by_std
    advantages, _returns = fn(**kwargs)
    return advantages


# --------------------------------------------------------------------------- loss


def policy_loss(old_logprobs: torch.Tensor, logprobs: torch.Tensor, advantages: torch.Tensor,
                response_mask: torch.Tensor, spec: AlgoSpec, *, ref_logprobs: torch.Tensor | None = None,
                entropy: torch.Tensor | None = None, batch_num_tokens: int | None = None,
                global_batch_size: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped policy-gradient loss (+ KL to the reference, - entropy bonus), verl's math.

    ``batch_num_tokens`` / ``global_batch_size``: totals over the whole step when this call sees
    one micro-batch of it (gradient accumulation); None means this call sees the whole batch.
    Returns the scalar loss and metrics (``pg_loss``, ``clipfrac``, ``clipfrac_lower``,
    ``ppo_kl``, ``kl``, ``entropy``).
    """
    from verl.trainer.ppo import core_algos

    mask = response_mask.float()
    config = spec.actor_config(batch_num_tokens, global_batch_size)
    loss_fn = core_algos.get_policy_loss_fn(spec.policy_loss)
    pg_loss, pg_metrics = loss_fn(old_log_prob=old_logprobs, log_prob=logprobs, advantages=advantages,
                                  response_mask=mask, loss_agg_mode=spec.loss_agg_mode, config=config)
    info = config.global_batch_info
    metrics = {
        "pg_loss": float(pg_loss.detach()),
        "clipfrac": float(pg_metrics.get("actor/pg_clipfrac", 0.0)),
        "clipfrac_lower": float(pg_metrics.get("actor/pg_clipfrac_lower", 0.0)),
        "ppo_kl": float(pg_metrics.get("actor/ppo_kl", 0.0)),
    }
    loss = pg_loss
    if ref_logprobs is not None:
        kl_mat = core_algos.kl_penalty(logprobs, ref_logprobs, spec.kl_type)  # type: ignore[arg-type]
        kl = core_algos.agg_loss(kl_mat, mask, spec.loss_agg_mode, **info)
        metrics["kl"] = float(kl.detach())
        if spec.kl_coef > 0:
            loss = loss + spec.kl_coef * kl
    if entropy is not None:
        ent = core_algos.agg_loss(entropy, mask, spec.loss_agg_mode, **info)
        metrics["entropy"] = float(ent.detach())
        if spec.entropy_coef > 0:
            loss = loss - spec.entropy_coef * ent
    return loss, metrics


# --------------------------------------------------------------------------- DAPO filters


def informative_groups(rewards: Sequence[float], group_ids: Sequence[str], atol: float = 1e-6) -> set[str]:
    """Groups whose rewards are not all equal (DAPO dynamic sampling keeps only these)."""
    by_group: dict[str, list[float]] = defaultdict(list)
    for reward, gid in zip(rewards, group_ids, strict=True):
        by_group[gid].append(float(reward))
    return {gid for gid, rs in by_group.items() if max(rs) - min(rs) > atol}


def overlong(length: int, spec: AlgoSpec) -> float:
    """The overlong penalty (<= 0) of a response of ``length`` tokens; 0 when the penalty is off."""
    if spec.overlong is None:
        return 0.0
    o = spec.overlong
    return overlong_penalty(length, o.max_length, o.cache_length, o.penalty_factor)
