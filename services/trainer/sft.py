"""Supervised fine-tuning on trajectories (``local`` engine), and the policy helpers RL shares.

Loss only on the policy's own tokens: each record is tokenized into ``(input_ids, loss_mask)``
(``services.trainer.data.records.tokenize_sft_record`` for RAMP cold-start records and QA
trajectories alike), and the cross-entropy is averaged over the tokens whose mask is 1, over the
whole accumulated batch (so gradient accumulation gives the same update as one big batch).
Observation blocks (``<information>``), the prompt and padding have mask 0.

The result is a checkpoint folder (``model.safetensors`` + config + tokenizer) that the rollout
workers, ``LocalBackend`` and any HF-compatible server (``transformers serve``) load as is.

    job config: {"data": ["/path/records.jsonl"], "model": "smollm2", "epochs": 1, "lr": 2e-5}
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, field_validator

from shared.config import hf_offline

if TYPE_CHECKING:
    import torch

    from services.trainer.engine import JobContext

log = logging.getLogger(__name__)

Tokenized = tuple[list[int], list[int]]  # (input_ids, loss_mask)


class OptimSpec(BaseModel):
    """AdamW and its schedule."""

    lr: float = Field(default=2e-5, gt=0.0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=0, ge=0)  # linear warm-up, then constant (RL) / linear decay (SFT)
    max_grad_norm: float = Field(default=1.0, gt=0.0)


class SFTConfig(BaseModel):
    """A ``sft`` job."""

    data: list[str] = Field(min_length=1)  # JSONL files of SFT records (see module docstring)
    model: str = "smollm2"  # embedded name or a checkpoint folder to start from
    epochs: float = Field(default=1.0, gt=0.0)  # passes over the data (fractional: a prefix of the last)
    max_steps: int | None = Field(default=None, ge=1)  # optimizer steps cap (None: from epochs)
    micro_batch_size: int = Field(default=4, ge=1)  # sequences per forward/backward
    grad_accum: int = Field(default=4, ge=1)  # micro-batches per optimizer step
    max_length: int = Field(default=1024, ge=16)  # tokens per record
    train_layers: int | None = Field(default=None, ge=1)  # train only the top N blocks (None: every weight)
    drop_longer: bool = True  # drop longer records (True) or truncate them (False: loses their final answer)
    limit: int | None = Field(default=None, ge=1)  # use only the first N records of all files
    optim: OptimSpec = Field(default_factory=OptimSpec)
    dtype: Literal["float32", "bfloat16"] = "bfloat16"  # bf16 autocast for forward/backward (fp32 weights)
    seed: int = 0
    checkpoint_name: str = "checkpoint"  # folder under the job dir

    @field_validator("data")
    @classmethod
    def _files_exist(cls, v: list[str]) -> list[str]:
        missing = [p for p in v if not Path(p).is_file()]
        if missing:
            raise ValueError(f"no such file: {', '.join(missing)}")
        return v


# --------------------------------------------------------------------------- policy helpers (SFT and RL)


def load_policy(model: str, trainable: bool = True, train_layers: int | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from the embedded name or a folder; fp32 weights on CPU.

    ``train_layers``: train only the top N transformer blocks and the final norm (the embeddings,
    tied to the output layer, and the blocks below stay frozen). Backpropagation then stops at the
    lowest trained block: with 10 of SmolLM2's 30 blocks a step costs about half a full one.
    """
    hf_offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.models import resolve

    path = resolve(model)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    net = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    net.train(trainable)
    if not trainable:
        net.requires_grad_(False)
    elif train_layers is not None:
        freeze_below(net, train_layers)
    return net, tokenizer


def freeze_below(model: Any, train_layers: int) -> None:
    """Freeze everything but the top ``train_layers`` decoder blocks and the final norm."""
    blocks = getattr(model.base_model, "layers", None)
    if blocks is None:
        raise ValueError(f"train_layers: {type(model).__name__} has no decoder block list (base_model.layers)")
    if not 1 <= train_layers <= len(blocks):
        raise ValueError(f"train_layers must be between 1 and {len(blocks)}, got {train_layers}")
    model.requires_grad_(False)
    for block in list(blocks)[len(blocks) - train_layers:]:
        block.requires_grad_(True)
    norm = getattr(model.base_model, "norm", None)
    if norm is not None:
        norm.requires_grad_(True)


def save_checkpoint(model: Any, tokenizer: Any, path: Path) -> Path:
    """A loadable HF folder: safetensors weights, config, generation config, tokenizer.

    Written to a temporary sibling and renamed, so a reader never sees half a checkpoint."""
    import shutil

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def autocast(dtype: str) -> Any:
    import torch

    if dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def pad_batch(seqs: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad_id: int) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, loss_mask)``, each ``(batch, max_len)``."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    loss = torch.zeros((len(seqs), width), dtype=torch.float32)
    for row, (s, m) in enumerate(zip(seqs, masks, strict=True)):
        ids[row, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        attn[row, :len(s)] = 1
        loss[row, :len(m)] = torch.tensor(list(m), dtype=torch.float32)
    return ids, attn, loss


def token_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   with_entropy: bool = False, only: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(token_t | tokens_<t) for t >= 1, ``(batch, len - 1)``; optionally the entropy per position.

    ``only`` (``(batch, len - 1)``, 0/1): compute the output layer just where it is 1 (the trained
    tokens) and leave 0 elsewhere. The vocabulary projection and its softmax over every position
    are a fifth of a small model's compute and most of its memory; training reads a fraction of them.
    """
    import torch

    if only is None or not _plain_output_layer(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
        return logp, entropy
    sel = only.bool()
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
    logp_sel = torch.log_softmax(model.get_output_embeddings()(hidden[sel]).float(), dim=-1)  # (m, vocab)
    picked = logp_sel.gather(-1, input_ids[:, 1:][sel].unsqueeze(-1)).squeeze(-1)
    logp = torch.zeros(sel.shape, dtype=picked.dtype).masked_scatter(sel, picked)
    entropy = None
    if with_entropy:  # differentiable: an entropy bonus needs its gradient
        entropy = torch.zeros(sel.shape, dtype=picked.dtype).masked_scatter(sel, -(logp_sel.exp() * logp_sel).sum(-1))
    return logp, entropy


def _plain_output_layer(model: Any) -> bool:
    """Whether logits are just ``lm_head(base_model(...))`` (no soft-capping or scaling after it)."""
    config = model.config
    return (model.base_model is not model and model.get_output_embeddings() is not None
            and not getattr(config, "final_logit_softcapping", None) and getattr(config, "logit_scale", 1.0) in (1.0, None))


def masked_nll(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
               n_tokens: int) -> torch.Tensor:
    """Sum of -log p over the targets whose loss mask is 1, divided by ``n_tokens`` (the trained tokens
    of the whole optimizer step, so micro-batch losses add up to the step's token mean)."""
    logp, _ = token_logprobs(model, input_ids, attention_mask, only=loss_mask[:, 1:])
    return -(logp * loss_mask[:, 1:]).sum() / n_tokens


# --------------------------------------------------------------------------- records


def sft_tokenizer() -> Callable[[dict[str, Any], Any], Tokenized]:
    """The project's one record -> (ids, loss mask) function (services.trainer.data.records)."""
    from services.trainer.data.records import tokenize_sft_record

    return tokenize_sft_record


def load_records(paths: Sequence[str], limit: int | None = None) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records[:limit] if limit is not None else records


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
    model, tokenizer = load_policy(config.model, train_layers=config.train_layers)
    tokenize = sft_tokenizer()
    examples: list[Tokenized] = []
    dropped = 0
    for record in load_records(config.data, config.limit):
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
    total_steps = config.max_steps or max(1, math.ceil(len(examples) * config.epochs / per_step))
    order: list[int] = []
    while len(order) < total_steps * per_step:
        epoch = list(range(len(examples)))
        random.shuffle(epoch)
        order.extend(epoch)

    trained = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trained, lr=config.optim.lr, betas=config.optim.betas,
                              weight_decay=config.optim.weight_decay)
    warm = config.optim.warmup_steps

    def lr_at(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.05, 1.0 - (step - warm) / max(1, total_steps - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_at)
    pad_id = int(tokenizer.pad_token_id)
    metrics: dict[str, float] = {}
    started = time.monotonic()
    trained_tokens = 0
    for step in range(total_steps):
        if should_stop is not None and should_stop():
            break
        batch = [examples[i] for i in order[step * per_step:(step + 1) * per_step]]
        n_tokens = sum(sum(m[1:]) for _, m in batch)  # the loss is a mean over every trained token of the step
        loss_sum = 0.0
        optim.zero_grad(set_to_none=True)
        for start in range(0, len(batch), config.micro_batch_size):
            micro = batch[start:start + config.micro_batch_size]
            input_ids, attn, loss_mask = pad_batch([s for s, _ in micro], [m for _, m in micro], pad_id)
            with autocast(config.dtype):
                loss = masked_nll(model, input_ids, attn, loss_mask, n_tokens)
            loss.backward()
            loss_sum += float(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
        optim.step()
        sched.step()
        trained_tokens += n_tokens
        elapsed = time.monotonic() - started
        metrics = {"loss": loss_sum, "grad_norm": float(grad_norm), "lr": float(sched.get_last_lr()[0]),
                   "tokens": float(n_tokens), "tokens_per_s": trained_tokens / max(elapsed, 1e-9)}
        if on_step is not None:
            on_step(step + 1, total_steps, metrics)
    model.eval()
    path = save_checkpoint(model, tokenizer, out_dir / config.checkpoint_name)
    return {**metrics, "examples": len(examples), "dropped_long": dropped, "steps": total_steps,
            "checkpoint": str(path)}


def run_sft_job(ctx: JobContext) -> dict[str, Any]:
    config = ctx.config
    assert isinstance(config, SFTConfig)

    def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
        ctx.report(step, metrics, progress=step / total)

    result = train_sft(config, ctx.dir, on_step=on_step, should_stop=ctx.cancelled)
    ctx.check_cancelled()
    register_checkpoint(ctx, config.checkpoint_name)
    write_result(ctx, result)
    return {k: v for k, v in result.items() if isinstance(v, int | float)}


def register_checkpoint(ctx: JobContext, name: str) -> None:
    for file in sorted((ctx.dir / name).iterdir()):
        if file.is_file():
            ctx.add_artifact(f"{name}/{file.name}")


def write_result(ctx: JobContext, result: dict[str, Any]) -> None:
    """``result.json``: what the job produced (checkpoint path, files), for the next job to use."""
    ctx.artifact_path("result.json").write_text(json.dumps(result, indent=2, default=str))
    ctx.add_artifact("result.json")
