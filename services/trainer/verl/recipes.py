"""The four papers' RL settings as recipes for the verl engine (``searchlab train --engine verl --recipe``).

A recipe is what a paper fixes: the prompt template, the advantage estimator and its group size, the
learning rate and KL, the reward, how many documents a search returns, where searches go (and the
noise curriculum), the training data. Everything a cluster decides (model, GPUs, batch sizes, lengths)
stays in :class:`~services.trainer.verl.run.VerlConfig`; a recipe only supplies its defaults.

============  ==========  ==================================================================================
recipe        template    settings
============  ==========  ==================================================================================
search_r1     search_r1   GRPO n=5, lr 1e-6, KL 0.001 (low-var), EM reward (Search-R1's format-aware table),
                          3 documents, retriever; NQ + HotpotQA train parts
research      research    GRPO n=5, lr 1e-6, KL 0.001, F1 else 0.1 for a well-formed answer (``<result>``
                          observations, ``\\boxed{}`` answers), 5 documents; MuSiQue train part
zerosearch    search_r1   the simulator with p_noise 0 -> 0.5 (base 4) over training, GRPO (or REINFORCE:
                          ``--algorithm reinforce``), F1 reward, 5 documents; NQ + HotpotQA
masksearch    search_r1   stage 1 RAMP (mask count 1 -> 4 over the stage), stage 2 HotpotQA from stage 1's
                          weights; DAPO clip 0.2 / 0.28 with dynamic sampling, hybrid reward (format 0.2 +
                          the judge's verdict), 5 documents
============  ==========  ==================================================================================

DAPO's dynamic sampling: verl 0.7.1's trainer has no group filter (the ``filter_groups`` field exists,
nothing reads it), so :class:`~services.trainer.verl.manager.SearchlabAgentLoopManager` re-samples a
group whose rewards are all equal, up to ``resample_rounds`` times, before the batch goes to the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.trainer.learn.rl_curriculum import BackendChoice, NoiseSpec

Algorithm = Literal["grpo", "dapo", "reinforce"]
ADV_ESTIMATOR: dict[str, str] = {"grpo": "grpo", "dapo": "grpo", "reinforce": "reinforce_plus_plus"}


@dataclass(frozen=True)
class Stage:
    """One verl run of a recipe: its data and how many training steps it gets (None: the run's total)."""

    name: str
    data: Literal["qa", "ramp"] = "qa"  # qa: the datasets' train parts; ramp: RAMP samples (a ramp job's output)
    datasets: tuple[str, ...] = ("hotpotqa",)  # qa stages
    mask_stages: tuple[int, ...] = ()  # ramp: mask counts, in this order (the data is sorted by them)
    template: str | None = None  # None: the recipe's (RAMP prompts parse with the ramp template)
    metric: str | None = None  # None: the recipe's (RAMP's answers are scored by span recall)


@dataclass(frozen=True)
class Recipe:
    """A paper's settings; every field maps onto a VerlConfig default or the agent loop's config."""

    name: str
    paper: str  # where the numbers come from
    template: str = "search_r1"  # shared.protocol template
    algorithm: Algorithm = "grpo"
    group_size: int = 5  # samples per prompt
    lr: float = 1e-6
    kl_coef: float = 0.001
    reward: str = "search_r1"  # shared.rewards registry name
    metric: str = "em"  # em | f1 | acc | cover_em | recall | llm (the judge service)
    format_weight: float = 0.0  # hybrid reward's format part
    min_searches: int = 1  # real searches a trajectory needs for format credit
    topk: int = 3  # documents per search
    search: BackendChoice = "retriever"  # retriever | simulator | mix
    noise: NoiseSpec = field(default_factory=lambda: NoiseSpec(start=0.0, end=0.0))  # simulator p_noise(step)
    clip: tuple[float, float] = (0.2, 0.2)  # PPO clip ratio low / high (DAPO: clip-higher)
    resample_rounds: int = 0  # DAPO dynamic sampling: re-sample all-equal groups this many times
    stages: tuple[Stage, ...] = (Stage("qa", datasets=("nq", "hotpotqa")),)

    @property
    def needs_judge(self) -> bool:
        return self.metric == "llm"


RECIPES: dict[str, Recipe] = {
    "search_r1": Recipe(
        "search_r1", "Search-R1 (Jin et al. 2025): GRPO, EM, 3 documents",
        reward="search_r1", metric="em", topk=3),
    "research": Recipe(
        "research", "ReSearch (Chen et al. 2025): F1 else 0.1, <result> + \\boxed{}",
        template="research", reward="research", metric="f1", topk=5,
        stages=(Stage("qa", datasets=("musique",)),)),
    "zerosearch": Recipe(
        "zerosearch", "ZeroSearch (Sun et al. 2025): simulated search, p_noise 0 -> 0.5 (b=4), F1",
        reward="hybrid", metric="f1", format_weight=0.0, topk=5, search="simulator",
        noise=NoiseSpec(start=0.0, end=0.5, base=4.0)),
    "masksearch": Recipe(
        "masksearch", "MaskSearch (Wu et al. 2025): RAMP then HotpotQA, DAPO, hybrid reward with the judge",
        algorithm="dapo", reward="hybrid", metric="llm", format_weight=0.2, topk=5, clip=(0.2, 0.28),
        resample_rounds=2,
        stages=(Stage("ramp", data="ramp", mask_stages=(1, 2, 3, 4), template="ramp", metric="recall"),
                Stage("hotpotqa", datasets=("hotpotqa",)))),
}


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}") from None
