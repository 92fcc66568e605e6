"""``device: auto|cpu|cuda`` of the local engine: auto picks CUDA only where a GPU is visible, a job that
asks for CUDA on a machine without one is refused when it is submitted, and autocast follows the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import LlamaConfig, LlamaForCausalLM

from services.trainer.learn.policy import autocast, device_of, pad_batch, token_logprobs
from services.trainer.learn.rl import RLConfig
from services.trainer.learn.sft import SFTConfig
from shared.config import LLMSettings, resolve_device

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA GPU")


def test_auto_is_cuda_only_where_a_gpu_is_visible() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert LLMSettings().device == "auto" and RLConfig().device == "auto"


@no_gpu
def test_cuda_without_a_gpu_is_refused_at_submission(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        resolve_device("cuda")
    with pytest.raises(ValidationError, match="no CUDA GPU is visible"):
        RLConfig(device="cuda")
    data = tmp_path / "sft.jsonl"
    data.write_text("{}\n")
    with pytest.raises(ValidationError, match="no CUDA GPU is visible"):
        SFTConfig(data=[str(data)], device="cuda")
    with pytest.raises(ValidationError):
        RLConfig(device="tpu")  # type: ignore[arg-type]


def test_autocast_follows_the_device_and_float32_is_untouched() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    device = device_of(model)
    assert device.type == "cpu"
    ids, attn, mask = pad_batch([[1, 2, 3, 4]], [[0, 1, 1, 1]], pad_id=0)
    with autocast("bfloat16", device.type):
        assert torch.get_autocast_dtype(device.type) == torch.bfloat16 and torch.is_autocast_enabled(device.type)
        bf16, _ = token_logprobs(model, ids, attn, only=mask[:, 1:])
    with autocast("float32", device.type):
        assert not torch.is_autocast_enabled(device.type)
        fp32, _ = token_logprobs(model, ids, attn, only=mask[:, 1:])
    assert bf16.device == fp32.device == device
    assert torch.allclose(bf16, fp32, atol=5e-2) and not torch.equal(bf16, fp32)  # bf16 compute really ran
