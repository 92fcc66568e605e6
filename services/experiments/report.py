"""An experiment's report: per-question eval scores -> mean ± SE per arm, paired differences, answer hacking.

Inputs: the eval job's ``predictions.jsonl`` (one row per method and question: prediction, scores) and each
arm's HotpotQA RL ``metrics.jsonl`` (per step). Outputs in the run folder:

- ``report.json``  everything below, plus the budget, job ids and timings
- ``report.md``    table: arm | n | cover-EM | acc | EM | F1 (each ± SE) | answered | Δ F1 vs its comparison
                   arm (± paired SE) | eval answer tokens | candidates per answer; then the training table:
                   reward, F1, answer tokens and candidates per answer at the first and last RL step
- ``report.png``   scores with ±1 SE error bars, and answer tokens / candidates per answer over the RL steps

SEs (:mod:`shared.stats`): binomial for the 0/1 scores (cover-EM, acc, EM, answered), a seeded bootstrap for
F1; differences are paired over the same questions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from services.experiments.registry import Experiment
from services.trainer.learn.rl_metrics import answer_candidate_count
from shared.metrics import METRIC_DEFINITIONS, tokens
from shared.stats import Estimate, estimate, mean, paired_difference

SCORES = ("cover_em", "acc", "em", "f1")  # table columns, in order
BINARY = {"cover_em": True, "acc": True, "em": True, "answered": True, "f1": False, "recall": False}
HACKING = ("answer_tokens_mean", "answer_candidates_mean", "multi_candidate_rate")  # RL step metrics (item 5)
REFERENCE = "agent"  # the untrained prompted agent, evaluated beside the arms
SEED = 0  # bootstrap seed: the same predictions give the same report


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def per_question(rows: Sequence[Mapping[str, Any]], method: str) -> dict[str, dict[str, float]]:
    """``{question key: {score: value, "answered", "answer_tokens", "candidates"}}`` of one method."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["method"] != method:
            continue
        prediction = r.get("prediction")
        scores = {k: float(v) for k, v in r["scores"].items()}
        out[f"{r['dataset']}:{r['id']}"] = {**scores, "answered": float(prediction is not None),
                                            "answer_tokens": float(len(tokens(prediction or ""))),
                                            "candidates": float(answer_candidate_count(prediction))}
    return out


def _est(e: Estimate) -> dict[str, float]:
    return {"mean": e.mean, "se": e.se, "n": e.n}


def arm_scores(questions: Mapping[str, Mapping[str, float]], order: Sequence[str]) -> dict[str, Any]:
    """Mean ± SE of every score over ``order`` (a missing question scores 0), eval answer length/candidates
    over the answered ones."""
    out: dict[str, Any] = {}
    for score, binary in BINARY.items():
        out[score] = _est(estimate([questions.get(q, {}).get(score, 0.0) for q in order], binary, SEED))
    answered = [questions[q] for q in order if questions.get(q, {}).get("answered")]
    out["answer_tokens"] = mean([a["answer_tokens"] for a in answered])
    out["candidates"] = mean([a["candidates"] for a in answered])
    return out


def difference(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]],
               order: Sequence[str]) -> dict[str, Any]:
    """Paired ``a - b`` of every table score over the same questions."""
    return {score: _est(paired_difference([a.get(q, {}).get(score, 0.0) for q in order],
                                          [b.get(q, {}).get(score, 0.0) for q in order], BINARY[score], SEED))
            for score in SCORES}


def training(metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The HotpotQA RL stage over its steps: first and last value of the reward, F1 and the hacking metrics,
    and the per-step series of the hacking metrics (for the plot)."""
    keys = ("reward_mean", "f1", "accuracy", *HACKING)
    steps = [m for m in metrics if "reward_mean" in m]
    first, last = (steps[0], steps[-1]) if steps else ({}, {})
    return {"steps": [int(m.get("step", i + 1)) for i, m in enumerate(steps)],
            "first": {k: float(first.get(k, 0.0)) for k in keys}, "last": {k: float(last.get(k, 0.0)) for k in keys},
            "series": {k: [float(m.get(k, 0.0)) for m in steps] for k in HACKING}}


def build(exp: Experiment, rows: Sequence[Mapping[str, Any]], methods: Mapping[str, str],
          metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """The report dict: ``methods`` maps arm (and the reference) -> its eval method name; ``metrics`` arm ->
    its HotpotQA RL metrics rows."""
    by_arm = {arm: per_question(rows, method) for arm, method in methods.items()}
    order = sorted(by_arm[exp.baseline])
    for name, questions in by_arm.items():
        if sorted(questions) != order:
            raise ValueError(f"arm {name} was evaluated on other questions than {exp.baseline}")
    arms: dict[str, Any] = {}
    for name in methods:
        arm = exp.arms.get(name)
        entry: dict[str, Any] = {"title": arm.title if arm else "the untrained prompted agent (reference)",
                                 "item": arm.item if arm else "", "method": methods[name],
                                 **arm_scores(by_arm[name], order)}
        if arm is not None:
            versus = exp.versus(name)
            entry["versus"] = versus
            entry["difference"] = difference(by_arm[name], by_arm[versus], order) if versus != name else None
            entry["training"] = training(metrics.get(name, []))
        arms[name] = entry
    return {"experiment": exp.name, "title": exp.title, "n": len(order), "arms": arms,
            "metrics": {s: METRIC_DEFINITIONS[s] for s in SCORES}}


# --------------------------------------------------------------------------- rendering


def _pm(e: Mapping[str, float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{100 * e['mean']:{sign}.1f} ± {100 * e['se']:.1f}"


def markdown(report: Mapping[str, Any]) -> str:
    b = report["budget"]
    per_step = b["batch_size"] * b["group_size"]
    lines = [
        f"# Experiment `{report['experiment']}` ({report['budget_name']} budget)", "", report["title"], "",
        f"Every arm: {b['rl_steps']} HotpotQA RL steps x {per_step} episodes ({b['batch_size']} questions x "
        f"{b['group_size']} samples); pre-training arms add {b['pretrain_steps']} steps' worth (RAMP RL steps of "
        f"{per_step} episodes, or SFT steps of {per_step} sequences). Evaluated on the same {report['n']} HotpotQA "
        "*eval*-part questions, greedy, with the real retriever.", "",
        "Scores in % (mean ± standard error: binomial for 0/1 scores, bootstrap for F1); Δ F1 = paired difference "
        "with the arm named, over the same questions. answer tokens / candidates: of the eval answers "
        "(candidates = pieces an answer splits into at ; | / newline, \"or\", and \", \" before a word). "
        + "; ".join(report["metrics"].values()) + ".", "",
        "| arm | n | cover-EM | acc | EM | F1 | answered | Δ F1 (vs) | answer tokens | candidates/answer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, a in report["arms"].items():
        diff = a.get("difference")
        delta = f"{_pm(diff['f1'], signed=True)} ({a['versus']})" if diff else "—"
        scores = " | ".join(_pm(a[s]) for s in SCORES)
        lines.append(f"| {name} | {a['f1']['n']} | {scores} | {_pm(a['answered'])} | {delta} | "
                     f"{a['answer_tokens']:.2f} | {a['candidates']:.2f} |")
    lines += ["", "Arms:", ""]
    lines += [f"- `{name}` ({a['item'] or 'ref'}): {a['title']}" for name, a in report["arms"].items()]
    lines += ["", "## Training: reward hacking, measured", "",
              "The HotpotQA RL stage of each arm, first step -> last step. answer tokens = normalized tokens of the "
              "extracted answer; candidates = candidates per answer; multi = share of answers naming more than one. "
              "A reward that pays for padding or listing shows as tokens and candidates rising while F1 does not.",
              "", "| arm | reward | F1 | answer tokens | candidates/answer | multi |", "|---|---|---|---|---|---|"]
    for name, a in report["arms"].items():
        t = a.get("training")
        if not t:
            continue
        cells = [f"{t['first'][k]:.3f} -> {t['last'][k]:.3f}" for k in
                 ("reward_mean", "f1", "answer_tokens_mean", "answer_candidates_mean", "multi_candidate_rate")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"![scores and answers]({Path(report['files']['png']).name})", "",
              f"Jobs: {json.dumps(report['jobs'])}", "", f"Time per job (s): {json.dumps(report['timings_s'])}", ""]
    return "\n".join(lines)


def plot(report: Mapping[str, Any], path: Path) -> Path:
    """Scores with ±1 SE bars per arm; answer tokens and candidates per answer over the RL steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = report["arms"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    width = 0.8 / max(1, len(arms))
    for i, (name, a) in enumerate(arms.items()):
        xs = [x + i * width for x in range(len(SCORES))]
        axes[0].bar(xs, [100 * a[s]["mean"] for s in SCORES], width, yerr=[100 * a[s]["se"] for s in SCORES],
                    capsize=3, label=name)
    axes[0].set_xticks([x + width * (len(arms) - 1) / 2 for x in range(len(SCORES))],
                       ["cover-EM", "acc", "EM", "F1"])
    axes[0].set_title(f"eval, n = {report['n']} (%, ±1 SE)")
    axes[0].legend(fontsize=7)
    for ax, key, title in ((axes[1], "answer_tokens_mean", "answer tokens (RL steps)"),
                           (axes[2], "answer_candidates_mean", "candidates per answer (RL steps)")):
        for name, a in arms.items():
            t = a.get("training")
            if t and t["steps"]:
                ax.plot(t["steps"], t["series"][key], marker="o", markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("HotpotQA RL step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['experiment']} ({report['budget_name']} budget)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def bench_line(report: Mapping[str, Any]) -> str:
    """``BENCH experiment name=... budget=... n=... <arm>_f1=... <arm>_cover_em=... <arm>_answer_tokens=...``."""
    parts = [f"name={report['experiment']}", f"budget={report['budget_name']}", f"n={report['n']}"]
    for name, a in report["arms"].items():
        parts += [f"{name}_f1={a['f1']['mean']:.4f}", f"{name}_f1_se={a['f1']['se']:.4f}",
                  f"{name}_cover_em={a['cover_em']['mean']:.4f}", f"{name}_answer_tokens={a['answer_tokens']:.2f}"]
    return "BENCH experiment " + " ".join(parts)
