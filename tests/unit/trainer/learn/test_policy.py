"""SFT loss: only policy tokens are trained (prompt, observation and padding targets are not),
and gradient accumulation over micro-batches equals one big batch. A tiny randomly initialized
Llama stands in for the policy (the math, not the model, is under test)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from services.trainer.learn.policy import masked_nll, pad_batch, token_logprobs

# prompt x3, policy x2, observation x3, policy x2
SEQ_A = [5, 6, 7, 10, 11, 20, 21, 22, 12, 13]
MASK_A = [0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
SEQ_B = [5, 6, 14, 15, 16]
MASK_B = [0, 0, 1, 1, 1]


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(config)


def test_pad_batch_right_pads_and_keeps_masks_aligned() -> None:
    ids, attn, mask = pad_batch([SEQ_A, SEQ_B], [MASK_A, MASK_B], pad_id=0)
    assert ids.shape == (2, 10)
    assert ids[1].tolist() == SEQ_B + [0] * 5
    assert attn[1].tolist() == [1] * 5 + [0] * 5
    assert mask[0].tolist() == MASK_A and mask[1].tolist() == MASK_B + [0] * 5


def test_loss_is_the_mean_nll_of_policy_tokens_only() -> None:
    model = _model()
    ids, attn, mask = pad_batch([SEQ_A, SEQ_B], [MASK_A, MASK_B], pad_id=0)
    n = sum(MASK_A[1:]) + sum(MASK_B[1:])
    loss = masked_nll(model, ids, attn, mask, n)
    with torch.no_grad():
        want = 0.0
        for seq, m in ((SEQ_A, MASK_A), (SEQ_B, MASK_B)):
            logits = model(input_ids=torch.tensor([seq])).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            want -= sum(float(logp[t - 1, seq[t]]) for t in range(1, len(seq)) if m[t])
    assert abs(float(loss.detach()) - want / n) < 1e-5


def test_observation_targets_carry_no_gradient() -> None:
    model = _model()
    ids, attn, mask = pad_batch([SEQ_A], [MASK_A], pad_id=0)
    logits = model(input_ids=ids, attention_mask=attn).logits.float()
    logits.retain_grad()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    (-(logp * mask[:, 1:]).sum()).backward()
    assert logits.grad is not None
    grad_rows = logits.grad[0].abs().sum(-1)  # position t predicts token t + 1
    for t in range(len(SEQ_A) - 1):
        assert (grad_rows[t] > 0) == bool(MASK_A[t + 1]), t


def test_gradient_accumulation_equals_one_batch() -> None:
    seqs, masks = [SEQ_A, SEQ_B], [MASK_A, MASK_B]
    n = sum(sum(m[1:]) for m in masks)
    full = _model()
    ids, attn, mask = pad_batch(seqs, masks, pad_id=0)
    masked_nll(full, ids, attn, mask, n).backward()
    accum = _model()
    for s, m in zip(seqs, masks, strict=True):
        i, a, k = pad_batch([s], [m], pad_id=0)
        masked_nll(accum, i, a, k, n).backward()
    for p_full, p_acc in zip(full.parameters(), accum.parameters(), strict=True):
        assert p_full.grad is not None and p_acc.grad is not None
        assert torch.allclose(p_full.grad, p_acc.grad, atol=1e-6)


def test_token_logprobs_entropy_is_differentiable() -> None:
    model = _model()
    ids, attn, _ = pad_batch([SEQ_B], [MASK_B], pad_id=0)
    _, entropy = token_logprobs(model, ids, attn, with_entropy=True)
    assert entropy is not None and entropy.requires_grad
    assert bool((entropy > 0).all())


def test_output_layer_on_trained_positions_only_gives_the_same_values_and_gradients() -> None:
    """``only=mask`` projects just the trained positions onto the vocabulary: same log-probs and
    entropies there (0 elsewhere), same gradients as the full projection."""
    ids, attn, mask = pad_batch([SEQ_A, SEQ_B], [MASK_A, MASK_B], pad_id=0)
    target = mask[:, 1:]
    full_model, fast_model = _model(), _model()
    full_lp, full_ent = token_logprobs(full_model, ids, attn, with_entropy=True)
    fast_lp, fast_ent = token_logprobs(fast_model, ids, attn, with_entropy=True, only=target)
    assert fast_ent is not None and full_ent is not None
    assert torch.allclose(fast_lp, full_lp * target, atol=1e-6)
    assert torch.allclose(fast_ent, full_ent * target, atol=1e-6)
    assert bool((fast_lp[target == 0] == 0).all())
    ((full_lp * target).sum() + (full_ent * target).sum()).backward()
    (fast_lp.sum() + fast_ent.sum()).backward()
    for a, b in zip(full_model.parameters(), fast_model.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_train_layers_freezes_everything_below_the_top_blocks() -> None:
    from services.trainer.learn.policy import freeze_below

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    freeze_below(model, 1)
    ids, attn, mask = pad_batch([SEQ_A], [MASK_A], pad_id=0)
    masked_nll(model, ids, attn, mask, sum(MASK_A[1:])).backward()
    for name, p in model.named_parameters():
        top = name.startswith("model.layers.2.") or name == "model.norm.weight"
        assert p.requires_grad == top, name
        assert (p.grad is not None and bool(p.grad.abs().sum() > 0)) == top, name


def test_auto_dtype_autocasts_to_bf16_only_where_the_cpu_computes_it_natively() -> None:
    # on a CPU without AVX512-BF16 / AMX, bf16 autocast is emulated: forward + backward of SmolLM2 ran 20x slower
    from services.trainer.learn.policy import autocast
    from shared.config import cpu_has_bf16

    a, b = torch.randn(4, 8), torch.randn(8, 4)
    with autocast("auto", "cpu"):
        auto = (a @ b).dtype
    with autocast("bfloat16", "cpu"):
        forced = (a @ b).dtype
    with autocast("float32", "cpu"):
        plain = (a @ b).dtype
    assert auto == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    assert (forced, plain) == (torch.bfloat16, torch.float32)
