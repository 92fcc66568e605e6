"""Ready-made jobs the dashboard offers (``GET /presets``), so the page hard-codes no config.

Each is ``(kind, config)`` as ``POST /jobs`` takes it, validated against its kind's config by the
unit tests; the dashboard shows the config (editable) before it submits.
"""

from __future__ import annotations

from shared.schemas import JobPreset

_TINY_EPISODE = {"max_turns": 1, "max_total_tokens": 96, "obs_max_tokens": 32, "topk": 1,
                 "sampling": {"max_new_tokens": 16, "temperature": 1.0, "seed": 0},
                 "reward": {"kind": "hybrid", "metric": "f1", "format_weight": 0.2}}

PRESETS: list[JobPreset] = [
    JobPreset(
        name="tiny-eval", title="Tiny eval: direct vs RAG, 4 questions", kind="eval",
        config={"datasets": ["hotpotqa"], "methods": ["direct", "rag"], "n": 4,
                "eval": {"max_new_tokens": 24, "max_turns": 1}},
        doc="A minute on a laptop: the eval table, predictions and side-by-side of two methods."),
    JobPreset(
        name="tiny-rl", title="Tiny RL: 2 GRPO steps, 2 prompts x 2 samples", kind="rl",
        config={"model": "smollm2", "steps": 2, "batch_size": 2, "group_size": 2, "micro_batch_size": 4,
                "prompts": {"dataset": "hotpotqa", "limit": 4}, "episode": _TINY_EPISODE,
                "algo": {"name": "grpo", "entropy_coef": 0.01}, "optim": {"lr": 1e-4}},
        doc="Curves with two points and a trajectory per episode: the smallest real RL run."),
    JobPreset(
        name="eval-agent", title="Eval: direct, RAG and the search agent, 20 questions", kind="eval",
        config={"datasets": ["hotpotqa"], "methods": ["direct", "rag", "agent"], "n": 20,
                "eval": {"max_new_tokens": 64, "max_turns": 3}},
        doc="MaskSearch's baselines side by side on the eval part."),
    JobPreset(
        name="rl-grpo", title="RL: GRPO, 20 steps, 4 prompts x 4 samples", kind="rl",
        config={"model": "smollm2", "steps": 20, "batch_size": 4, "group_size": 4,
                "prompts": {"dataset": "hotpotqa", "limit": 200},
                "episode": {"max_turns": 2, "max_total_tokens": 384, "sampling": {"max_new_tokens": 64}},
                "algo": {"name": "grpo"}},
        doc="A short real run: reward, accuracy, KL and entropy move over 20 steps."),
]
