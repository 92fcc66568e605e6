"""Training curves from a job's ``metrics.jsonl``, rendered to PNG (matplotlib, no display).

    plot_training(Path("jobs/rl-.../metrics.jsonl"), Path("curves.png"))

Panels: reward (mean, and its parts), accuracy, interaction turns and searches per episode
(ZeroSearch's "interaction turns" plot), response length, the answers' length and candidates per
answer (padding and enumeration, the reward hacks MaskSearch reports), and the curricula (p_noise, mask
stage); panels whose metrics a run does not log are left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PANELS: list[tuple[str, list[str]]] = [
    ("reward", ["reward_mean", "reward_format", "reward_answer", "reward_penalty"]),
    ("accuracy", ["accuracy", "cover_em", "f1"]),
    ("interaction turns", ["turns_mean", "searches_mean"]),
    ("response length (tokens)", ["response_length_mean", "policy_tokens_mean"]),
    ("answers (reward hacking)", ["answer_tokens_mean", "answer_candidates_mean", "multi_candidate_rate"]),
    ("curriculum", ["p_noise", "max_masks"]),
    ("loss / KL", ["pg_loss", "kl", "entropy", "clipfrac"]),
    ("SFT loss", ["loss"]),
]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def plot_training(metrics_path: Path, out_path: Path, title: str = "") -> Path:
    """Write the curves of one run to ``out_path`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    panels = [(name, [k for k in keys if any(isinstance(r.get(k), int | float) for r in rows)])
              for name, keys in PANELS]
    panels = [(name, keys) for name, keys in panels if keys]
    if not panels:
        raise ValueError(f"{metrics_path}: no metrics to plot")
    cols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 3.2 * nrows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels, strict=False):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
