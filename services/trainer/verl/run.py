"""The ``verl`` engine: the distributed path for real models on GPU clusters (DESIGN.md §5).

It writes what verl needs and launches ``verl.trainer.main_ppo`` on a Ray cluster:

- a dataset in verl's RL parquet format (Search-R1 style rows: ``data_source``, ``prompt`` as a
  chat list, ``ability``, ``reward_model.ground_truth``, ``extra_info.tools_kwargs``);
- a tool config pointing verl's stock Search-R1-style ``SearchTool`` at our retriever (or the
  simulator's ``/retrieve`` facade; both speak the same format);
- our reward function (:mod:`services.trainer.verl.reward`) as verl's custom reward, with the
  judge service for ``metric="llm"``;
- the hydra overrides for GRPO or DAPO, composed against verl's own config tree and checked
  by verl's own config dataclasses before anything is launched.

verl 0.7.1's ``main_ppo`` has no dynamic sampling (DAPO's group filter lives in verl's recipe
folder, which the wheel does not ship): the DAPO preset here is clip-higher, token-mean loss and
the DAPO reward manager's overlong penalty; the local engine implements dynamic sampling.

Composing and validating run on CPU (tested); launching needs GPUs and Ray.

    python -m services.trainer.verl.run --out run/ --model Qwen/Qwen2.5-7B-Instruct \
        --retriever-url http://retriever:8001 --algorithm grpo [--dry-run]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from shared.data import load_split
from shared.protocol import get_template

log = logging.getLogger(__name__)

REWARD_FN_PATH = Path(__file__).with_name("reward.py")
SEARCH_TOOL_CLASS = "verl.tools.search_tool.SearchTool"


class VerlConfig(BaseModel):
    """What a verl run needs; each field maps onto verl's hydra config (see ``overrides``)."""

    model_path: str  # HF model folder or hub name reachable by the cluster
    algorithm: Literal["grpo", "dapo"] = "grpo"
    retriever_url: str  # retriever (or simulator facade) base URL
    topk: int = Field(default=3, ge=1)  # documents per search
    group_size: int = Field(default=5, ge=1)  # GRPO n (Search-R1: 5)
    lr: float = Field(default=1e-6, gt=0)  # Search-R1: 1e-6
    kl_coef: float = Field(default=0.001, ge=0)  # low_var_kl loss coefficient (Search-R1: 0.001)
    train_batch_size: int = Field(default=512, ge=1)
    ppo_mini_batch_size: int = Field(default=256, ge=1)
    micro_batch_size_per_gpu: int = Field(default=8, ge=1)
    max_prompt_length: int = Field(default=4096, ge=64)
    max_response_length: int = Field(default=3000, ge=64)
    max_turns: int = Field(default=4, ge=1)  # assistant turns (searches + answer)
    tool_response_length: int = Field(default=500, ge=16)  # tokens of each <information>
    total_training_steps: int = Field(default=1005, ge=1)
    n_gpus_per_node: int = Field(default=8, ge=1)
    nnodes: int = Field(default=1, ge=1)
    tensor_parallel: int = Field(default=2, ge=1)  # SGLang rollout TP
    gpu_memory_utilization: float = Field(default=0.6, gt=0, le=1)
    reward: str = "hybrid"  # shared.rewards registry name
    metric: str = "f1"  # em | cover_em | f1 | recall | llm (judge)
    format_weight: float = 0.2
    judge_url: str | None = None  # needed for metric "llm"
    overlong_buffer: int = Field(default=512, ge=1)  # DAPO: soft overlong window (tokens)
    project: str = "searchlab"
    experiment: str = "search-agent"
    checkpoint_dir: str | None = None


@dataclass
class VerlRun:
    out_dir: Path
    train_parquet: Path
    val_parquet: Path
    tool_config: Path
    overrides: list[str]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "verl.trainer.main_ppo", *self.overrides]


# --------------------------------------------------------------------------- data


def qa_to_verl_row(row: dict[str, Any], index: int, split: str, template: str = "search_r1") -> dict[str, Any]:
    """One QA row (shared schema) as a verl RL parquet row with the search tool's kwargs."""
    question = str(row["question"])
    answers = [str(a) for a in row["answers"]]
    source = str(row.get("source", "qa"))
    return {
        "data_source": source,
        "prompt": get_template(template).build_messages(question),
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
        "extra_info": {
            "split": split, "index": index, "id": str(row.get("id", index)), "question": question,
            "need_tools_kwargs": True,
            "tools_kwargs": {"search": {"create_kwargs": {"ground_truth": {"target": answers},
                                                          "question": question, "data_source": source}}},
        },
    }


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def export_qa(datasets: list[str], out_dir: Path, template: str = "search_r1") -> tuple[Path, Path]:
    """The ``train`` parts as training data and the ``eval`` parts as validation (never mixed)."""
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    for name in datasets:
        train += [qa_to_verl_row(r, len(train) + i, "train", template) for i, r in enumerate(load_split(name, "train"))]
        val += [qa_to_verl_row(r, len(val) + i, "eval", template) for i, r in enumerate(load_split(name, "eval"))]
    return write_parquet(train, out_dir / "train.parquet"), write_parquet(val, out_dir / "val.parquet")


# --------------------------------------------------------------------------- tool


def tool_config(retriever_url: str, topk: int, timeout_s: int = 30, rate_limit: int = 120) -> dict[str, Any]:
    """verl's stock SearchTool, pointed at our ``/retrieve`` (byte-compatible with Search-R1's)."""
    return {"tools": [{
        "class_name": SEARCH_TOOL_CLASS,
        "config": {"retrieval_service_url": retriever_url.rstrip("/") + "/retrieve", "topk": topk,
                   "num_workers": rate_limit, "rate_limit": rate_limit, "timeout": timeout_s, "type": "native"},
        "tool_schema": {"type": "function", "function": {
            "name": "search",
            "description": "Searches Wikipedia for relevant information based on the given queries.",
            "parameters": {"type": "object", "properties": {"query_list": {
                "type": "array", "items": {"type": "string"},
                "description": "A list of fully-formed semantic queries. The tool returns results for each."}},
                "required": ["query_list"]},
        }},
    }]}


# --------------------------------------------------------------------------- config


def overrides(cfg: VerlConfig, train: Path, val: Path, tools: Path) -> list[str]:
    """Hydra overrides of verl's ``ppo_trainer`` config for this run (``+`` adds keys verl lacks)."""
    a = "actor_rollout_ref"
    out = [
        f"data.train_files={train}", f"data.val_files={val}", "data.prompt_key=prompt",
        f"data.train_batch_size={cfg.train_batch_size}", f"data.max_prompt_length={cfg.max_prompt_length}",
        f"data.max_response_length={cfg.max_response_length}", "data.return_raw_chat=true",
        f"{a}.model.path={cfg.model_path}", f"{a}.model.use_remove_padding=true",
        f"{a}.actor.optim.lr={cfg.lr}", f"{a}.actor.ppo_mini_batch_size={cfg.ppo_mini_batch_size}",
        f"{a}.actor.ppo_micro_batch_size_per_gpu={cfg.micro_batch_size_per_gpu}",
        f"{a}.actor.use_kl_loss={'true' if cfg.kl_coef > 0 else 'false'}",
        f"{a}.actor.kl_loss_coef={cfg.kl_coef}", f"{a}.actor.kl_loss_type=low_var_kl",
        f"{a}.rollout.name=sglang", f"{a}.rollout.mode=async", f"{a}.rollout.n={cfg.group_size}",
        f"{a}.rollout.tensor_model_parallel_size={cfg.tensor_parallel}",
        f"{a}.rollout.gpu_memory_utilization={cfg.gpu_memory_utilization}",
        f"{a}.rollout.log_prob_micro_batch_size_per_gpu={cfg.micro_batch_size_per_gpu}",
        f"{a}.ref.log_prob_micro_batch_size_per_gpu={cfg.micro_batch_size_per_gpu}",
        f"{a}.rollout.multi_turn.enable=true", f"{a}.rollout.multi_turn.max_assistant_turns={cfg.max_turns}",
        f"{a}.rollout.multi_turn.tool_config_path={tools}",
        f"{a}.rollout.multi_turn.max_tool_response_length={cfg.tool_response_length}",
        "algorithm.adv_estimator=grpo", "algorithm.use_kl_in_reward=false",
        f"reward.custom_reward_function.path={REWARD_FN_PATH}", "reward.custom_reward_function.name=compute_score",
        f"+reward.custom_reward_function.reward_kwargs.reward={cfg.reward}",
        f"+reward.custom_reward_function.reward_kwargs.metric={cfg.metric}",
        f"+reward.custom_reward_function.reward_kwargs.format_weight={cfg.format_weight}",
        f"trainer.total_training_steps={cfg.total_training_steps}", f"trainer.n_gpus_per_node={cfg.n_gpus_per_node}",
        f"trainer.nnodes={cfg.nnodes}", f"trainer.project_name={cfg.project}",
        f"trainer.experiment_name={cfg.experiment}", "trainer.logger=[console]",
    ]
    if cfg.judge_url:
        out.append(f"+reward.custom_reward_function.reward_kwargs.judge_url={cfg.judge_url}")
    if cfg.checkpoint_dir:
        out.append(f"trainer.default_local_dir={cfg.checkpoint_dir}")
    if cfg.algorithm == "dapo":
        out += [
            f"{a}.actor.clip_ratio_low=0.2", f"{a}.actor.clip_ratio_high=0.28",
            f"{a}.actor.loss_agg_mode=token-mean", "reward.reward_manager.name=dapo",
            "+reward.reward_kwargs.overlong_buffer_cfg.enable=true",
            f"+reward.reward_kwargs.overlong_buffer_cfg.len={cfg.overlong_buffer}",
            "+reward.reward_kwargs.overlong_buffer_cfg.penalty_factor=1.0",
            "+reward.reward_kwargs.overlong_buffer_cfg.log=true",
            f"+reward.reward_kwargs.max_resp_len={cfg.max_response_length}",
        ]
    return out


def compose(overrides_: list[str]) -> Any:
    """verl's ``ppo_trainer`` config with our overrides, checked by verl's own config dataclasses.

    Raises ``ValueError`` naming the problem when an override does not fit verl's schema.
    """
    import verl
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from verl.utils.config import omega_conf_to_dataclass

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    try:
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            cfg = hydra_compose(config_name="ppo_trainer", overrides=overrides_)
        omega_conf_to_dataclass(cfg.algorithm)
        omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
        omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ValueError(f"verl config rejected: {exc}") from exc
    return cfg


def prepare(cfg: VerlConfig, out_dir: Path, datasets: list[str] | None = None,
            train_parquet: Path | None = None, val_parquet: Path | None = None) -> VerlRun:
    """Write data, tool config and overrides for a run; validate the composed config."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if train_parquet is None or val_parquet is None:
        train_parquet, val_parquet = export_qa(datasets or ["hotpotqa"], out_dir / "data")
    tools = out_dir / "search_tool_config.yaml"
    tools.write_text(yaml.safe_dump(tool_config(cfg.retriever_url, cfg.topk), sort_keys=False))
    run = VerlRun(out_dir, train_parquet, val_parquet, tools, overrides(cfg, train_parquet, val_parquet, tools))
    compose(run.overrides)
    (out_dir / "overrides.txt").write_text("\n".join(run.overrides) + "\n")
    return run


def launch(run: VerlRun) -> int:
    """Run ``verl.trainer.main_ppo`` (needs GPUs and Ray; SGLang rollouts)."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("the verl engine needs GPUs (SGLang rollouts, FSDP); use the local engine on CPU")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.call(run.command(), env=env, cwd=run.out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="searchlab train --engine verl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder (data, tool config, overrides)")
    parser.add_argument("--model", required=True, help="policy model path or name")
    parser.add_argument("--retriever-url", required=True)
    parser.add_argument("--algorithm", choices=["grpo", "dapo"], default="grpo")
    parser.add_argument("--datasets", nargs="+", default=["hotpotqa"], help="train parts used for RL")
    parser.add_argument("--metric", default="f1")
    parser.add_argument("--judge-url")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--dry-run", action="store_true", help="write and validate, do not launch")
    args = parser.parse_args(argv)
    cfg = VerlConfig(model_path=args.model, retriever_url=args.retriever_url, algorithm=args.algorithm,
                     metric=args.metric, judge_url=args.judge_url, n_gpus_per_node=args.gpus, nnodes=args.nnodes)
    run = prepare(cfg, args.out, args.datasets)
    log.info("verl run prepared in %s (%d overrides, validated)", run.out_dir, len(run.overrides))
    if args.dry_run:
        sys.stdout.write(" ".join(run.command()) + "\n")
        return 0
    return launch(run)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
