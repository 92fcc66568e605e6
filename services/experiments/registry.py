"""The named experiments: each an ordered set of arms, each arm a chain of ordinary jobs (kind + config).

    experiment("searchr1", FULL).arms["f1"].jobs   -> (JobSpec(stage="rl", kind="rl", config={...}),)

An arm ends in an ``rl`` job on HotpotQA's *train* part; its checkpoint is what gets evaluated (one eval job
over every arm, the same HotpotQA *eval* questions, greedy). A config value ``"@<stage>.<key>..."`` names a
field of an earlier stage's ``result.json`` in the same arm (``"@sft.checkpoint"``, ``"@ramp.files.jsonl"``)
and is filled in when that stage has run (:func:`resolve`).

Equal compute (docs/experiments.md): every arm runs ``rl_steps`` HotpotQA steps of ``batch_size x group_size``
episodes. An arm that pre-trains adds ``pretrain_steps`` steps' worth, the same for every such arm: RAMP RL
steps of the same size, or SFT optimizer steps of ``batch_size x group_size`` sequences each. Everything else
(model, seed, prompts, episode limits, reward, optimizer) is the same across an experiment's arms unless the
arm is about it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

REF = "@"  # a config string starting with this names an earlier stage's result field


@dataclass(frozen=True)
class Budget:
    """How big an experiment's arms are (every arm of one experiment runs at the same budget)."""

    rl_steps: int  # HotpotQA RL steps of every arm
    batch_size: int  # questions per step
    group_size: int  # samples per question (GRPO n): batch_size x group_size episodes per step
    pretrain_steps: int  # what a pre-training arm adds: RAMP RL steps, or SFT steps of batch x group sequences
    ramp_samples: int  # RAMP samples built for the RAMP arms
    eval_n: int  # HotpotQA eval-part questions every arm is evaluated on
    max_turns: int  # search turns per episode (training and eval)
    max_new_tokens: int  # per turn
    max_total_tokens: int  # response budget of an episode
    obs_max_tokens: int  # each <information> block
    topk: int  # documents per search
    train_layers: int  # the top N blocks of SmolLM2 are trained (SFT and RL alike)
    lr: float  # RL and SFT learning rate
    prompt_limit: int  # HotpotQA train questions RL draws from

    @property
    def episodes_per_step(self) -> int:
        return self.batch_size * self.group_size


BUDGETS: dict[str, Budget] = {
    # CI-sized: a few minutes per arm on 2 cores; the numbers mean nothing, the pipeline is what is tested
    "small": Budget(rl_steps=1, batch_size=2, group_size=2, pretrain_steps=1, ramp_samples=40, eval_n=8,
                    max_turns=1, max_new_tokens=16, max_total_tokens=128, obs_max_tokens=48, topk=1,
                    train_layers=4, lr=1e-4, prompt_limit=64),
    # what a note reports: one whole experiment in about an hour on 2 cores
    "full": Budget(rl_steps=4, batch_size=4, group_size=4, pretrain_steps=4, ramp_samples=400, eval_n=100,
                   max_turns=2, max_new_tokens=48, max_total_tokens=512, obs_max_tokens=192, topk=3,
                   train_layers=10, lr=2e-5, prompt_limit=2000),
}


@dataclass(frozen=True)
class JobSpec:
    """One job of an arm: ``POST /jobs {"kind", "config"}`` once the ``@`` references are filled in."""

    stage: str  # name inside the arm (what a reference names)
    kind: str  # a trainer job kind (services.trainer.jobs.kinds.JOB_KINDS)
    config: dict[str, Any]


@dataclass(frozen=True)
class Arm:
    """One variant of an experiment."""

    name: str  # short, used in file names and the BENCH line
    item: str  # the letter of the comparison it belongs to (a, b, ...)
    title: str  # what it is, in a sentence
    jobs: tuple[JobSpec, ...]  # run in order; the last is the HotpotQA rl job whose checkpoint is evaluated
    versus: str | None = None  # the arm this one is compared with (None: the experiment's first arm)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    budget: Budget
    arms: dict[str, Arm] = field(default_factory=dict)

    @property
    def baseline(self) -> str:
        return next(iter(self.arms))

    def versus(self, arm: str) -> str:
        return self.arms[arm].versus or self.baseline

    def eval_config(self) -> dict[str, Any]:
        """The ``eval`` settings every arm is scored with (greedy, the training episode limits)."""
        b = self.budget
        return {"max_turns": b.max_turns, "max_new_tokens": b.max_new_tokens, "max_total_tokens": b.max_total_tokens,
                "obs_max_tokens": b.obs_max_tokens, "topk": b.topk, "temperature": 0.0}


# --------------------------------------------------------------------------- job builders


def episode(b: Budget, metric: str = "f1") -> dict[str, Any]:
    """Every rl job's episode spec; only the reward's answer metric varies between arms."""
    return {"max_turns": b.max_turns, "max_total_tokens": b.max_total_tokens, "obs_max_tokens": b.obs_max_tokens,
            "topk": b.topk, "sampling": {"max_new_tokens": b.max_new_tokens, "temperature": 1.0, "seed": 0},
            "reward": {"kind": "hybrid", "metric": metric, "format_weight": 0.2}}


def rl_job(b: Budget, stage: str = "rl", *, model: str = "smollm2", steps: int | None = None,
           prompts: dict[str, Any] | None = None, metric: str = "f1", curriculum: dict[str, Any] | None = None,
           **extra: Any) -> JobSpec:
    """An rl job of the budget's size (HotpotQA train part unless ``prompts`` says otherwise)."""
    config = {"model": model, "steps": steps or b.rl_steps, "batch_size": b.batch_size, "group_size": b.group_size,
              "micro_batch_size": 4, "train_layers": b.train_layers,
              "prompts": prompts or {"kind": "qa", "dataset": "hotpotqa", "limit": b.prompt_limit},
              "episode": episode(b, metric), "curriculum": curriculum or {},
              "algo": {"name": "grpo", "entropy_coef": 0.01}, "optim": {"lr": b.lr}, "seed": 0, **extra}
    return JobSpec(stage, "rl", config)


def ramp_job(b: Budget, strategy: str = "random") -> JobSpec:
    return JobSpec("ramp", "ramp", {"samples": b.ramp_samples, "selector": "heuristic", "strategy": strategy,
                                    "name": f"experiment-{strategy}", "parquet": False, "report": False, "seed": 0})


def ramp_rl_arm(b: Budget, name: str, item: str, title: str, strategy: str = "random", mask_order: str = "staged",
                versus: str | None = None) -> Arm:
    """RAMP samples -> RL on them (``pretrain_steps``, mask-count curriculum or mixed) -> HotpotQA RL."""
    pretrain = rl_job(b, "pretrain", steps=b.pretrain_steps, prompts={"kind": "ramp", "path": f"{REF}ramp.files.jsonl"},
                      curriculum={"mask_order": mask_order})
    return Arm(name, item, title, (ramp_job(b, strategy), pretrain, rl_job(b, model=f"{REF}pretrain.checkpoint")),
               versus)


def ramp_sft_arm(b: Budget) -> Arm:
    """RAMP samples -> scripted trajectories with real retrieval -> SFT (``pretrain_steps`` optimizer steps of
    batch x group sequences: the same sequences per step as an RL step has episodes) -> HotpotQA RL."""
    sequences = b.episodes_per_step
    micro = 2 if sequences % 2 == 0 else 1
    cold = JobSpec("coldstart", "coldstart", {"ramp_path": f"{REF}ramp.files.jsonl",
                                              "ramp_limit": 2 * b.pretrain_steps * sequences, "qa": [], "qa_limit": 0,
                                              "topk": b.topk, "name": "experiment"})
    sft = JobSpec("sft", "sft", {"data": [f"{REF}coldstart.files.records"], "model": "smollm2",
                                 "max_steps": b.pretrain_steps, "micro_batch_size": micro,
                                 "grad_accum": sequences // micro, "max_length": 1024,
                                 "train_layers": b.train_layers, "optim": {"lr": b.lr, "warmup_steps": 0}, "seed": 0})
    return Arm("ramp_sft", "b", "RAMP SFT pre-training (cold-start trajectories on RAMP samples) -> HotpotQA RL",
               (ramp_job(b), cold, sft, rl_job(b, model=f"{REF}sft.checkpoint")))


# --------------------------------------------------------------------------- the experiments


def masksearch(b: Budget) -> dict[str, Arm]:
    return {a.name: a for a in (
        Arm("rl", "a", "HotpotQA RL alone", (rl_job(b),)),
        ramp_sft_arm(b),
        ramp_rl_arm(b, "ramp_rl", "c", "RAMP RL pre-training (mask-count curriculum 1->4, random masking) -> "
                    "HotpotQA RL"),
        ramp_rl_arm(b, "ramp_rl_mixed", "d", "as ramp_rl, RAMP prompts of every mask count mixed (no curriculum)",
                    mask_order="mixed", versus="ramp_rl"),
        ramp_rl_arm(b, "ramp_rl_ppl", "e", "as ramp_rl, the spans the policy finds hardest masked (perplexity)",
                    strategy="ppl", versus="ramp_rl"),
    )}


def zerosearch(b: Budget) -> dict[str, Arm]:
    constant = {"start": 0.25, "end": 0.25}  # the curriculum's 0 -> 0.5 range, held at its middle
    return {a.name: a for a in (
        Arm("retriever", "a", "searches go to the real retriever", (rl_job(b),)),
        Arm("simulator", "b", "searches go to the cluster's simulator, ZeroSearch noise curriculum p_noise 0 -> 0.5",
            (rl_job(b, curriculum={"search_backend": "simulator"}),)),
        Arm("constant_noise", "d", "simulator with a constant p_noise of 0.25 (no curriculum)",
            (rl_job(b, curriculum={"search_backend": "simulator", "noise": constant}),), versus="simulator"),
        Arm("mix", "e", "each episode on the real retriever with probability 0.5, else the simulator (curriculum)",
            (rl_job(b, curriculum={"search_backend": "mix", "real_fraction": 0.5}),)),
    )}


def searchr1(b: Budget) -> dict[str, Arm]:
    return {a.name: a for a in (
        Arm("em_masked", "a", "EM reward, observation tokens masked from the loss (Search-R1)",
            (rl_job(b, metric="em"),)),
        Arm("em_unmasked", "a", "EM reward, observation tokens trained on too",
            (rl_job(b, metric="em", mask_observations=False),)),
        Arm("f1", "b", "token-F1 reward (ZeroSearch)", (rl_job(b, metric="f1"),)),
        Arm("recall", "b", "token-recall reward (MaskSearch's metric, the one it saw hacked)",
            (rl_job(b, metric="recall"),)),
        Arm("judge", "b", "LLM-judge reward (the judge service; MaskSearch's model-based reward)",
            (rl_job(b, metric="llm"),)),
    )}


EXPERIMENTS: dict[str, tuple[str, Callable[[Budget], dict[str, Arm]]]] = {
    "masksearch": ("MaskSearch: does RAMP pre-training help HotpotQA RL, and how should it be built?", masksearch),
    "zerosearch": ("ZeroSearch: real retriever vs simulated search, noise curriculum, real/simulated mix", zerosearch),
    "searchr1": ("Search-R1: observation-token loss masking; EM vs F1 vs recall vs judge rewards", searchr1),
}


def experiment(name: str, budget: str | Budget = "small", arms: list[str] | None = None) -> Experiment:
    """The experiment ``name`` at ``budget`` (a preset name or a :class:`Budget`), optionally only ``arms``
    (in the experiment's order); unknown names raise ``ValueError`` listing the valid ones."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; valid: {', '.join(BUDGETS)}")
        budget = BUDGETS[budget]
    title, build = EXPERIMENTS[name]
    all_arms = build(budget)
    if arms:
        unknown = [a for a in arms if a not in all_arms]
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(unknown)} of {name}; valid: {', '.join(all_arms)}")
        chosen = {k: a for k, a in all_arms.items() if k in arms}
        first = next(iter(chosen))  # a comparison whose other arm is left out is made with the first one kept
        all_arms = {k: a if a.versus in chosen else replace(a, versus=None if k == first else first)
                    for k, a in chosen.items()}
    return Experiment(name, title, budget, all_arms)


def resolve(config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``config`` with every ``"@stage.key..."`` string replaced by that field of ``results[stage]``."""

    def fill(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(REF):
            stage, *keys = value[len(REF):].split(".")
            if stage not in results:
                raise ValueError(f"{value}: no earlier stage '{stage}' in this arm")
            found: Any = results[stage]
            for key in keys:
                if not isinstance(found, Mapping) or key not in found:
                    raise ValueError(f"{value}: the {stage} job's result has no '{key}'")
                found = found[key]
            return found
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return copy.deepcopy(value)

    return dict(fill(dict(config)))
