"""The ``verl`` engine: a verl run whose rollouts are searchlab episodes (DESIGN.md §8).

``prepare`` writes one run directory per recipe (``recipes.py``: search_r1, research, zerosearch,
masksearch) and checks it in verl's own config tree before anything is launched::

    <out>/data/<stage>/{train,val}.parquet   verl's RL rows (Search-R1 style: prompt as a chat list,
                                             reward_model.ground_truth, extra_info.question); train parts
                                             train, eval parts validate, never mixed
    <out>/stages/<i>-<stage>/agent_loop.yaml searchlab's agent loop for verl's registry, with its LoopConfig
                                             (dispatch queue | inline, search backend, noise curriculum)
    <out>/stages/<i>-<stage>/overrides.txt   the hydra overrides (overrides.py), composed and validated
    <out>/command.sh                         the whole run: main_ppo per stage (a later stage starts from the
                                             previous stage's weights, merged to HF by verl's model merger)
    <out>/run.json                           the config, the recipe, each stage's sizes and command

Sizes are checked against the data: a train batch larger than a stage's training rows is an error
naming both numbers (verl drops the last partial batch: the dataloader would be empty). No secret is
written anywhere: the services' bearer tokens and the Redis URL reach the loop and the reward through
the environment of the launched processes (``SEARCHLAB_<SERVICE>_API_KEY`` / ``SEARCHLAB_API_KEY``,
``SEARCHLAB_REDIS_URL``).

Composing and validating run on CPU (tested); launching needs GPUs, Ray and the ``gpu`` extras.

    searchlab train --engine verl --recipe search_r1 --out run/ --model Qwen/Qwen2.5-3B-Instruct \\
        --retriever-url http://retriever:8001 [--dispatch queue|inline] [--dry-run] [--ray-address URL]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from services.trainer.verl.config import VerlConfig
from services.trainer.verl.loop_config import AGENT_NAME, LOOP_TARGET, LoopConfig
from services.trainer.verl.overrides import StageFiles, compose, overrides
from services.trainer.verl.recipes import RECIPES, Recipe, Stage, get_recipe
from shared.exports import export_verl
from shared.formats import qa_to_verl

__all__ = ["StageRun", "VerlConfig", "VerlRun", "export_qa", "main", "prepare", "qa_to_verl_row"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]


@dataclass
class StageRun:
    name: str
    dir: Path
    train_parquet: Path
    val_parquet: Path
    agent_loop: Path
    checkpoints: Path
    train_rows: int
    total_steps: int
    overrides: list[str]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "verl.trainer.main_ppo", *self.overrides]


@dataclass
class VerlRun:
    out_dir: Path
    recipe: str
    stages: list[StageRun]

    def commands(self) -> list[list[str]]:
        """Every command of the run in order: main_ppo per stage, a merge between stages."""
        out: list[list[str]] = []
        for i, stage in enumerate(self.stages):
            if i:
                out.append(merge_command(self.stages[i - 1]))
            out.append(stage.command())
        return out

    def script(self) -> str:
        lines = ["#!/usr/bin/env bash", "# written by searchlab (services/trainer/verl/run.py); needs GPUs, Ray and",
                 "# the gpu extras; the SEARCHLAB_*API_KEY keys and SEARCHLAB_REDIS_URL come from the environment", "set -euo pipefail",
                 f'export PYTHONPATH="{REPO}${{PYTHONPATH:+:$PYTHONPATH}}"',
                 # verl's tensorboard logger writes into the run folder, as a local job's tracker does, so
                 # `searchlab tensorboard` shows verl and local runs side by side
                 f'export TENSORBOARD_DIR="${{TENSORBOARD_DIR:-{self.out_dir}/tensorboard}}"']
        lines += [" ".join(shlex.quote(a) for a in cmd) for cmd in self.commands()]
        return "\n".join(lines) + "\n"


def merge_command(stage: StageRun) -> list[str]:
    """The previous stage's last checkpoint -> an HF folder the next stage starts from."""
    return [sys.executable, "-m", "services.trainer.verl.checkpoint", "merge", str(stage.checkpoints),
            "--target", str(stage.dir / "hf")]


# --------------------------------------------------------------------------- data


def qa_to_verl_row(row: dict[str, Any], index: int, split: str, template: str = "search_r1") -> dict[str, Any]:
    """One QA row (shared schema) as a verl RL parquet row with the search tool's kwargs (the one
    mapping, :func:`shared.formats.qa_to_verl`, which ``searchlab data import --format search-r1`` inverts)."""
    return qa_to_verl(row, index, split, template)


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def export_qa(datasets: list[str], out_dir: Path, template: str = "search_r1") -> tuple[Path, Path]:
    """The ``train`` parts as training data and the ``eval`` parts as validation (never mixed)."""
    return export_verl(datasets, out_dir, template)


def export_ramp(samples_path: str, mask_stages: tuple[int, ...], out_dir: Path) -> Path:
    """RAMP samples with the listed mask counts, sorted by them: with ``data.shuffle=false`` the data's
    order is MaskSearch's curriculum (1 mask first, then 2, ...)."""
    from services.trainer.data.export import verl_row
    from services.trainer.data.ramp import load_samples

    samples = [s for s in load_samples(samples_path) if s.n_masks in mask_stages]
    samples.sort(key=lambda s: mask_stages.index(s.n_masks))
    if not samples:
        raise ValueError(f"{samples_path}: no RAMP samples with {list(mask_stages)} masks")
    rows = [verl_row(s, i, "train") for i, s in enumerate(samples)]
    for row, s in zip(rows, samples, strict=True):
        row["extra_info"]["question"] = s.question
    return write_parquet(rows, out_dir / "train.parquet")


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(str(path)).metadata.num_rows)


# --------------------------------------------------------------------------- one stage


def loop_config(cfg: VerlConfig, recipe: Recipe, stage: Stage, total_steps: int) -> LoopConfig:
    return LoopConfig(
        dispatch=cfg.dispatch, template=stage.template or recipe.template, max_turns=cfg.max_turns,
        max_turn_tokens=cfg.max_turn_tokens, obs_max_tokens=cfg.obs_max_tokens, topk=recipe.topk,
        search=cfg.search or recipe.search, real_fraction=cfg.real_fraction, noise=recipe.noise,
        total_steps=total_steps, retriever_url=cfg.retriever_url, simulator_url=cfg.simulator_url,
        job_id=f"verl-{cfg.experiment}-{stage.name}", episode_timeout_s=cfg.episode_timeout_s,
        resample_rounds=recipe.resample_rounds)


def agent_loop_yaml(loop: LoopConfig) -> str:
    """The file verl's ``agent_loop_config_path`` names: our loop for its registry, with its config."""
    return yaml.safe_dump([{"name": AGENT_NAME, "_target_": LOOP_TARGET, "searchlab": loop.model_dump(mode="json")}],
                          sort_keys=False)


def check_sizes(cfg: VerlConfig, stage: str, train_rows: int) -> None:
    """A batch the data cannot fill is an error naming both numbers (verl would find no batch to train on)."""
    if cfg.train_batch_size > train_rows:
        raise ValueError(
            f"train_batch_size={cfg.train_batch_size} is larger than the {train_rows} training rows of stage "
            f"'{stage}': verl drops the last incomplete batch, so its dataloader would be empty; use a train "
            f"batch of at most {train_rows} (--train-batch-size) or more data")
    mini = cfg.ppo_mini_batch_size
    if mini is not None and mini > cfg.train_batch_size:
        raise ValueError(f"ppo_mini_batch_size={mini} is larger than train_batch_size={cfg.train_batch_size}")


def _stage(cfg: VerlConfig, recipe: Recipe, stage: Stage, index: int, out: Path, model_path: str,
           datasets: list[str] | None) -> StageRun:
    data_dir = out / "data" / stage.name
    template = stage.template or recipe.template
    val_sets = list(datasets or recipe.stages[-1].datasets)
    if stage.data == "ramp":
        if not cfg.ramp_samples:
            raise ValueError(f"recipe {recipe.name!r} starts with a RAMP stage: give ramp_samples "
                             "(--ramp-samples, the samples JSONL of a ramp job)")
        train = export_ramp(cfg.ramp_samples, stage.mask_stages, data_dir)
        _, val = export_qa(val_sets, data_dir / "qa", recipe.template)
    else:
        train, val = export_qa(list(datasets or stage.datasets), data_dir, template)
    rows = _rows(train)
    check_sizes(cfg, stage.name, rows)
    steps = cfg.total_training_steps or cfg.epochs * (rows // cfg.train_batch_size)
    stage_dir = out / "stages" / f"{index + 1}-{stage.name}"
    stage_dir.mkdir(parents=True, exist_ok=True)
    agent_loop = stage_dir / "agent_loop.yaml"
    agent_loop.write_text(agent_loop_yaml(loop_config(cfg, recipe, stage, steps)))
    checkpoints = Path(cfg.checkpoint_dir or out / "checkpoints") / stage.name
    files = StageFiles(train, val, agent_loop, checkpoints, model_path, steps, shuffle=stage.data != "ramp")
    sized = cfg.model_copy(update={"ppo_mini_batch_size": cfg.ppo_mini_batch_size or max(1, cfg.train_batch_size // 2),
                                   "metric": cfg.metric or stage.metric})
    if stage.template:
        recipe = replace(recipe, template=stage.template)
    over = overrides(sized, recipe, files) + [f"trainer.total_epochs={cfg.epochs}"]
    compose(over)
    (stage_dir / "overrides.txt").write_text("\n".join(over) + "\n")
    return StageRun(stage.name, stage_dir, train, val, agent_loop, checkpoints, rows, steps, over)


def prepare(cfg: VerlConfig, out_dir: Path, datasets: list[str] | None = None) -> VerlRun:
    """Write the run directory of ``cfg.recipe`` (module docstring) and validate every stage in verl's tree.

    ``datasets`` replaces the QA stage's datasets (the recipe's by default)."""
    recipe = get_recipe(cfg.recipe)
    if (cfg.metric or recipe.metric) == "llm" and not cfg.judge_url:
        raise ValueError(f"recipe {recipe.name!r} scores answers with the judge: give judge_url (--judge-url)")
    loop_config(cfg, recipe, recipe.stages[0], 1)  # fails early on a missing retriever / simulator URL
    out_dir.mkdir(parents=True, exist_ok=True)
    stages: list[StageRun] = []
    model_path = cfg.model_path
    for i, stage in enumerate(recipe.stages):
        stages.append(_stage(cfg, recipe, stage, i, out_dir, model_path, datasets if stage.data == "qa" else None))
        model_path = str(stages[-1].dir / "hf")
    run = VerlRun(out_dir, recipe.name, stages)
    script = out_dir / "command.sh"
    script.write_text(run.script())
    script.chmod(0o755)
    (out_dir / "run.json").write_text(json.dumps({
        "recipe": recipe.name, "paper": recipe.paper, "config": cfg.model_dump(mode="json"), "datasets": datasets,
        "stages": [{"name": s.name, "train_rows": s.train_rows, "total_steps": s.total_steps,
                    "train": str(s.train_parquet), "val": str(s.val_parquet), "overrides": str(s.dir / "overrides.txt")}
                   for s in stages],
        "commands": run.commands(),
    }, indent=2) + "\n")
    return run


def launch(run: VerlRun) -> int:
    """Run ``command.sh`` (needs GPUs, Ray and the gpu extras: SGLang rollouts, FSDP)."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("the verl engine needs GPUs (SGLang rollouts, FSDP); use the local engine on CPU")
    return subprocess.call(["bash", str(run.out_dir / "command.sh")], cwd=run.out_dir, env=dict(os.environ))


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="searchlab train --engine verl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=list(RECIPES), default="search_r1")
    parser.add_argument("--out", type=Path, required=True, help="run folder (data, agent loop, overrides, command)")
    parser.add_argument("--model", required=True, help="policy model path or name")
    parser.add_argument("--dispatch", choices=["queue", "inline"], default="queue")
    parser.add_argument("--retriever-url")
    parser.add_argument("--simulator-url")
    parser.add_argument("--judge-url")
    parser.add_argument("--algorithm", choices=["grpo", "dapo", "reinforce"], help="default: the recipe's")
    parser.add_argument("--search", choices=["retriever", "simulator", "mix"], help="default: the recipe's")
    parser.add_argument("--real-fraction", type=float, default=0.5, help="--search mix: share on the retriever")
    parser.add_argument("--datasets", nargs="+", help="QA sets whose train parts RL uses (default: the recipe's)")
    parser.add_argument("--ramp-samples", help="masksearch: the RAMP samples JSONL (a ramp job's output)")
    parser.add_argument("--metric", help="answer metric (default: the recipe's)")
    parser.add_argument("--train-batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, help="training steps per stage (default: one epoch)")
    parser.add_argument("--save-freq", type=int, default=50)
    parser.add_argument("--test-freq", type=int, default=25)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--tp", type=int, default=2, help="SGLang tensor parallel size")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="one more hydra override of verl's config (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="write and validate, print the commands, do not launch")
    parser.add_argument("--ray-address", metavar="URL",
                        help="launch on this Ray cluster's Jobs API (http://head:8265) and follow it, instead of "
                             "running command.sh here; --out must be on storage the cluster shares")
    parser.add_argument("--ray-python", default="python", help="--ray-address: the interpreter on the cluster")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> VerlConfig:
    return VerlConfig(
        recipe=args.recipe, dispatch=args.dispatch, model_path=args.model, retriever_url=args.retriever_url,
        simulator_url=args.simulator_url, judge_url=args.judge_url, algorithm=args.algorithm, metric=args.metric,
        search=args.search, real_fraction=args.real_fraction,
        ramp_samples=args.ramp_samples, train_batch_size=args.train_batch_size, total_training_steps=args.steps,
        save_freq=args.save_freq, test_freq=args.test_freq, n_gpus_per_node=args.gpus, nnodes=args.nnodes,
        tensor_parallel=args.tp, extra_overrides=args.override)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run = prepare(config_from_args(args), args.out, args.datasets)
    except ValueError as exc:
        sys.stderr.write(f"searchlab train --engine verl: {exc}\n")
        return 2
    log.info("verl run %s prepared in %s (%d stage(s), validated in verl's config tree)", run.recipe, run.out_dir,
             len(run.stages))
    if args.dry_run:
        sys.stdout.write(run.script())
        return 0
    if args.ray_address:
        from services.trainer.verl.ray_jobs import submit_and_follow

        return submit_and_follow(str(run.out_dir.resolve()), args.ray_address, python=args.ray_python)
    return launch(run)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
