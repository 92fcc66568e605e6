"""The policy as training sees it: load, freeze, pad, token log-probs, masked NLL, checkpoints, and the
one supervised training loop that SFT of the agent and SFT of the search simulator both run.

Tensors: a batch is right-padded ``(input_ids, attention_mask, loss_mask)``, each ``(batch, len)``;
``loss_mask[b, t] = 1`` when token ``t`` of row ``b`` is a target (a policy token; 0 on the prompt,
observations and padding). Position ``t - 1`` predicts token ``t``, so the log-probs of a batch are
``(batch, len - 1)`` and line up with ``loss_mask[:, 1:]``.

One optimizer step of :func:`train_supervised` (``grad_accum`` micro-batches)::

    n_tokens = sum of loss_mask[:, 1:] over the whole step
    for each micro-batch: loss = -(log p(targets) * mask).sum() / n_tokens ; loss.backward()
    clip grad norm -> AdamW step -> LR schedule (linear warm-up, linear decay to ``lr_floor`` x lr)

so gradient accumulation gives the same update as one big batch.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from shared.config import Device, hf_offline, resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch

Tokenized = tuple[list[int], list[int]]  # (input_ids, loss_mask)
# auto: bf16 autocast on CUDA and on CPUs that compute bf16 natively (AVX512-BF16 / AMX), else float32.
# Measured on an AVX2-only EPYC (2 threads, SmolLM2, 2 x 900 tokens): forward + backward 12 s in float32,
# 246 s under bf16 autocast, which that CPU only emulates.
TrainDtype = Literal["auto", "float32", "bfloat16"]


class OptimSpec(BaseModel):
    """AdamW and its schedule."""

    lr: float = Field(default=2e-5, gt=0.0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=0, ge=0)  # linear warm-up, then constant (RL) / linear decay (SFT)
    max_grad_norm: float = Field(default=1.0, gt=0.0)


# --------------------------------------------------------------------------- model


def load_policy(model: str, trainable: bool = True, train_layers: int | None = None,
                device: Device = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) from the embedded name or a folder; fp32 weights on ``device`` (``auto``: CUDA
    when a GPU is visible; compute runs in bf16 under :func:`autocast` on either device).

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
    net: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    net.to(resolve_device(device))
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
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def autocast(dtype: TrainDtype, device_type: str = "cpu") -> Any:
    """bf16 autocast on ``device_type`` (the model's: ``"cpu"`` or ``"cuda"``), or nothing for float32
    (``auto``: bf16 where the device computes it natively, see :data:`TrainDtype`)."""
    import torch

    if resolve_dtype(dtype, device_type) == "bfloat16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()


def device_of(model: Any) -> torch.device:
    """Where ``model``'s weights are (batches go there)."""
    return next(model.parameters()).device


# --------------------------------------------------------------------------- batches and log-probs


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
    logp = torch.zeros(sel.shape, dtype=picked.dtype, device=sel.device).masked_scatter(sel, picked)
    entropy = None
    if with_entropy:  # differentiable: an entropy bonus needs its gradient
        entropy = torch.zeros(sel.shape, dtype=picked.dtype, device=sel.device).masked_scatter(
            sel, -(logp_sel.exp() * logp_sel).sum(-1))
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


# --------------------------------------------------------------------------- the supervised loop


@dataclass
class LoopSpec:
    """How :func:`train_supervised` walks the examples."""

    steps: int  # optimizer steps
    micro_batch_size: int  # sequences per forward/backward
    grad_accum: int = 1  # micro-batches per optimizer step
    dtype: TrainDtype = "auto"  # autocast for forward/backward (weights stay fp32)
    lr_floor: float = 0.05  # the decay ends at this fraction of the peak learning rate
    seed: int = 0

    @property
    def per_step(self) -> int:
        return self.micro_batch_size * self.grad_accum


@dataclass
class LoopReport:
    steps: int = 0
    tokens: int = 0  # target tokens trained on
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    last: dict[str, float] = field(default_factory=dict)  # the last step's metrics


def steps_for(examples: int, epochs: float, per_step: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``examples`` (at least one)."""
    return max(1, math.ceil(examples * epochs / per_step))


def train_supervised(model: Any, tokenizer: Any, examples: Sequence[Tokenized], spec: LoopSpec, optim: OptimSpec,
                     on_step: Callable[[int, int, dict[str, float]], None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> LoopReport:
    """Masked-NLL training of ``model`` on ``examples`` (see the module docstring); the model stays in place.

    Examples are visited in shuffled epochs, one after the other (a step may span two epochs).
    ``on_step(step, total, metrics)`` runs after every optimizer step (it may raise to stop);
    ``should_stop()`` is asked before each step.
    """
    import torch

    if not examples:
        raise ValueError("no training example has a target (loss-mask 1) token")
    rng = random.Random(spec.seed)
    order: list[int] = []
    while len(order) < spec.steps * spec.per_step:
        epoch = list(range(len(examples)))
        rng.shuffle(epoch)
        order.extend(epoch)

    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    warm, total = optim.warmup_steps, spec.steps

    def lr_at(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(spec.lr_floor, 1.0 - (step - warm) / max(1, total - warm))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    pad_id = int(tokenizer.pad_token_id)
    device = device_of(model)
    report = LoopReport()
    started = time.monotonic()
    model.train()
    for step in range(total):
        if should_stop is not None and should_stop():
            break
        batch = [examples[i] for i in order[step * spec.per_step:(step + 1) * spec.per_step]]
        n_tokens = sum(sum(m[1:]) for _, m in batch)  # the loss is a mean over every trained token of the step
        loss_sum = 0.0
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, len(batch), spec.micro_batch_size):
            micro = batch[start:start + spec.micro_batch_size]
            input_ids, attn, loss_mask = (t.to(device) for t in
                                          pad_batch([s for s, _ in micro], [m for _, m in micro], pad_id))
            with autocast(spec.dtype, device.type):
                loss = masked_nll(model, input_ids, attn, loss_mask, n_tokens)
            loss.backward()
            loss_sum += float(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
        optimizer.step()
        schedule.step()
        report.steps, report.tokens = step + 1, report.tokens + n_tokens
        report.losses.append(loss_sum)
        report.seconds = time.monotonic() - started
        report.last = {"loss": loss_sum, "grad_norm": float(grad_norm), "lr": float(schedule.get_last_lr()[0]),
                       "tokens": float(n_tokens), "tokens_per_s": report.tokens / max(report.seconds, 1e-9)}
        if on_step is not None:
            on_step(step + 1, total, report.last)
    model.eval()
    return report
