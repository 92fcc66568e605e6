"""Supervised fine-tuning on trajectories (the ``local`` engine).

Loss only on the policy's own tokens: each record is tokenized into ``(input_ids, loss_mask)``
(``services.trainer.data.records.tokenize_sft_record`` for RAMP cold-start records and QA
trajectories alike), and the cross-entropy is averaged over the tokens whose mask is 1, over the
whole accumulated batch (so gradient accumulation gives the same update as one big batch): the
loop is :func:`services.trainer.learn.policy.train_supervised`.
Observation blocks (``<information>``), the prompt and padding have mask 0.

The result is a checkpoint folder (``model.safetensors`` + config + tokenizer) that the rollout
workers, ``LocalBackend`` and any HF-compatible server (``transformers serve``) load as is.

    job config: {"data": ["/path/records.jsonl"], "model": "smollm2", "epochs": 1, "lr": 2e-5}
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from services.trainer.learn.policy import (
    LoopSpec,
    OptimSpec,
    Tokenized,
    TrainDtype,
    load_policy,
    save_checkpoint,
    steps_for,
    train_supervised,
)
from shared.config import Device, resolve_device
from shared.confine import InputFile, ModelRef, SafeName

log = logging.getLogger(__name__)


class SFTSpec(BaseModel):
    """How an SFT run trains (everything but its data, start model and output): a ``sft`` job's settings, and
    each round's SFT of a ``distill`` job with ``rounds > 1``."""

    epochs: float = Field(default=1.0, gt=0.0)  # passes over the data (fractional: a prefix of the last)
    max_steps: int | None = Field(default=None, ge=1, le=1_000_000)  # optimizer steps cap (None: from epochs)
    micro_batch_size: int = Field(default=4, ge=1, le=256)  # sequences per forward/backward
    grad_accum: int = Field(default=4, ge=1, le=1024)  # micro-batches per optimizer step
    max_length: int = Field(default=1024, ge=16, le=32_768)  # tokens per record
    train_layers: int | None = Field(default=None, ge=1, le=1024)  # train only the top N blocks (None: every weight)
    drop_longer: bool = True  # drop longer records (True) or truncate them (False: loses their final answer)
    limit: int | None = Field(default=None, ge=1, le=10_000_000)  # use only the first N records of all files
    optim: OptimSpec = Field(default_factory=OptimSpec)
    dtype: TrainDtype = "auto"  # bf16 autocast for forward/backward where native (fp32 weights)
    device: Device = "auto"  # model, optimizer state and batches: CUDA when a GPU is visible (auto), else CPU
    seed: int = 0

    @field_validator("device")
    @classmethod
    def _device_exists(cls, v: Device) -> Device:
        resolve_device(v)  # "cuda" on a machine without a GPU is refused at submission
        return v


class SFTConfig(SFTSpec):
    """A ``sft`` job: :class:`SFTSpec` on ``data``, starting from ``model``."""

    data: list[InputFile] = Field(min_length=1, max_length=256)  # JSONL files of SFT records (see module docstring)
    model: ModelRef = "smollm2"  # embedded name or a checkpoint folder to start from
    checkpoint_name: SafeName = "checkpoint"  # folder under the job dir


# --------------------------------------------------------------------------- records


def sft_tokenizer() -> Callable[[dict[str, Any], Any], Tokenized]:
    """The project's one record -> (ids, loss mask) function (services.trainer.data.records)."""
    from services.trainer.data.records import tokenize_sft_record

    return tokenize_sft_record


def load_records(paths: Sequence[str], limit: int | None = None) -> list[dict[str, Any]]:
    """The SFT records of JSONL files; a line that is not a JSON object is a ``ValueError`` naming its file
    and line (a job then fails with that message, not a bare ``JSONDecodeError``)."""
    records: list[dict[str, Any]] = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg}); SFT data is JSONL, one "
                                     "record per line") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{number}: an SFT record is a JSON object, got {type(record).__name__}")
                records.append(record)
                if limit is not None and len(records) >= limit:
                    return records
    return records


def truncate(ids: list[int], mask: list[int], max_length: int) -> Tokenized:
    return ids[:max_length], mask[:max_length]


# --------------------------------------------------------------------------- training


def train_sft(config: SFTConfig, out_dir: Path,
              on_step: Callable[[int, int, dict[str, float]], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.data``; returns the final metrics and checkpoint path."""
    import torch

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    records = load_records(config.data, config.limit)  # a bad file fails now, before a model is loaded
    model, tokenizer = load_policy(config.model, train_layers=config.train_layers, device=config.device)
    tokenize = sft_tokenizer()
    examples: list[Tokenized] = []
    dropped = 0
    for record in records:
        ids, mask = tokenize(record, tokenizer)
        if len(ids) > config.max_length and config.drop_longer:
            dropped += 1
            continue
        ids, mask = truncate(ids, mask, config.max_length)
        if sum(mask[1:]) > 0:
            examples.append((ids, mask))
    log.info("sft: %d examples (%d longer than %d tokens dropped)", len(examples), dropped, config.max_length)
    if not examples:
        raise ValueError("no SFT record has a trainable (loss-mask 1) token")
    per_step = config.micro_batch_size * config.grad_accum
    spec = LoopSpec(steps=config.max_steps or steps_for(len(examples), config.epochs, per_step),
                    micro_batch_size=config.micro_batch_size, grad_accum=config.grad_accum, dtype=config.dtype,
                    seed=config.seed)
    report = train_supervised(model, tokenizer, examples, spec, config.optim, on_step=on_step,
                              should_stop=should_stop)
    path = save_checkpoint(model, tokenizer, out_dir / config.checkpoint_name)
    return {**report.last, "examples": len(examples), "dropped_long": dropped, "steps": spec.steps,
            "checkpoint": str(path)}
