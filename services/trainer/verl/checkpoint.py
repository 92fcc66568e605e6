"""verl checkpoints out: an actor checkpoint becomes an HF model folder, through verl's own model merger.

verl's trainer writes ``<default_local_dir>/global_step_<N>/actor/`` (``save_freq``) with one shard per
rank (``model_world_size_<W>_rank_<r>.pt``), ``fsdp_config.json`` and ``huggingface/`` (config and
tokenizer), and ``latest_checkpointed_iteration.txt`` beside the step folders. Any of the three levels
names a checkpoint here (the run's checkpoint folder: its latest step)::

    python -m services.trainer.verl.checkpoint merge <checkpoint> [--target DIR]   # prints the HF folder
    searchlab eval --policy <checkpoint> --dataset hotpotqa                         # merged once, then evaluated

:func:`ensure_hf` runs ``python -m verl.model_merger merge --backend fsdp`` once per checkpoint into the
cache (``<cache>/verl-merged/...``); a folder already merged is reused. Megatron checkpoints (no
``fsdp_config.json``) are refused with the command to run by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import subprocess
import sys
from pathlib import Path

from shared.config import cache_dir

log = logging.getLogger(__name__)

LATEST = "latest_checkpointed_iteration.txt"
STEP = re.compile(r"global_step_(\d+)$")


def actor_dir(path: str | Path) -> Path | None:
    """The actor folder a verl checkpoint path names (a run's checkpoint folder, a step, or the actor
    folder itself); None when ``path`` is not a verl checkpoint."""
    p = Path(path).expanduser()
    if (p / LATEST).is_file():
        p = p / f"global_step_{(p / LATEST).read_text().strip()}"
    elif p.is_dir() and not STEP.search(p.name) and p.name != "actor":
        steps = sorted((d for d in p.iterdir() if d.is_dir() and STEP.search(d.name)),
                       key=lambda d: int(STEP.search(d.name).group(1)))  # type: ignore[union-attr]
        if steps:
            p = steps[-1]
    if (p / "actor").is_dir():
        p = p / "actor"
    shards = list(p.glob("model_world_size_*_rank_*.pt")) if p.is_dir() else []
    return p if shards and (p / "huggingface").is_dir() else None


def is_verl_checkpoint(path: str | Path) -> bool:
    return actor_dir(path) is not None


def merge_command(actor: Path, target: Path) -> list[str]:
    """verl's model merger over an FSDP actor checkpoint."""
    return [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir", str(actor),
            "--target_dir", str(target)]


def merged_dir(actor: Path) -> Path:
    """Where the merge of ``actor`` goes in the cache (one folder per checkpoint)."""
    digest = hashlib.sha1(str(actor.resolve()).encode()).hexdigest()[:10]
    return cache_dir() / "verl-merged" / f"{actor.parent.name}-{digest}"


def ensure_hf(path: str | Path, target: Path | None = None) -> Path:
    """An HF folder of the verl checkpoint at ``path``: merged now, or the one merged before."""
    actor = actor_dir(path)
    if actor is None:
        raise ValueError(f"{path} is not a verl checkpoint (no global_step_*/actor with model shards)")
    if not (actor / "fsdp_config.json").is_file():
        raise ValueError(f"{actor} is not an FSDP checkpoint; merge it with "
                         f"`python -m verl.model_merger merge --backend megatron --local_dir {actor} --target_dir ...`")
    out = target or merged_dir(actor)
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    out.mkdir(parents=True, exist_ok=True)
    log.info("merging verl checkpoint %s -> %s", actor, out)
    done = subprocess.run(merge_command(actor, out), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"verl's model merger failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.trainer.verl.checkpoint",
                                     description="merge a verl checkpoint into an HF model folder")
    sub = parser.add_subparsers(dest="op", required=True)
    merge = sub.add_parser("merge")
    merge.add_argument("checkpoint", help="a run's checkpoint folder, a global_step_N folder, or its actor folder")
    merge.add_argument("--target", type=Path, help="the HF folder to write (default: in the cache)")
    args = parser.parse_args(argv)
    sys.stdout.write(f"{ensure_hf(args.checkpoint, args.target)}\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
