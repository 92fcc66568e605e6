"""verl checkpoints out, for real on CPU: verl's own ``FSDPCheckpointManager`` writes an FSDP2 actor checkpoint
of SmolLM2 (torch.distributed on gloo, one rank, in a subprocess as verl's trainer workers do), verl's own
model merger turns it into an HF folder, and ``searchlab eval --policy <checkpoint>`` evaluates it next to a
baseline through the queue and a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import main as searchlab
from services.trainer.verl.checkpoint import actor_dir, ensure_hf, merged_dir
from shared.processes import Proc

pytestmark = pytest.mark.slow

WRITE_CHECKPOINT = """
import os, sys, torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

model_path, root, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[4], rank=0, world_size=1)
model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",))
for layer in model.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
manager = FSDPCheckpointManager(model=model, optimizer=None, lr_scheduler=None,
                                processing_class=AutoTokenizer.from_pretrained(model_path),
                                checkpoint_config=OmegaConf.create({"save_contents": ["model"],
                                                                    "load_contents": ["model"]}))
manager.save_checkpoint(os.path.join(root, f"global_step_{step}", "actor"), global_step=step)
open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w").write(str(step))  # as verl's trainer does
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    from shared.processes import free_port

    root = tmp_path_factory.mktemp("verl-ckpt") / "checkpoints"
    root.mkdir()
    done = subprocess.run([sys.executable, "-c", WRITE_CHECKPOINT, str(smollm2_path), str(root), "2",
                           str(free_port())], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_any_level_of_a_checkpoint_names_its_actor(checkpoint: Path, tmp_path: Path) -> None:
    actor = checkpoint / "global_step_2" / "actor"
    assert actor_dir(checkpoint) == actor_dir(checkpoint / "global_step_2") == actor_dir(actor) == actor
    assert actor_dir(tmp_path) is None and actor_dir(actor / "huggingface") is None


def test_verls_merger_gives_the_trained_weights_as_an_hf_folder(checkpoint: Path, smollm2_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("SEARCHLAB_CACHE_DIR", str(tmp_path))  # the merge goes to this test's cache
    merged = ensure_hf(checkpoint)
    assert merged == merged_dir(checkpoint / "global_step_2" / "actor")
    stamp = (merged / "config.json").stat().st_mtime
    assert ensure_hf(checkpoint) == merged and (merged / "config.json").stat().st_mtime == stamp  # merged once
    got = AutoModelForCausalLM.from_pretrained(str(merged)).state_dict()
    want = AutoModelForCausalLM.from_pretrained(str(smollm2_path), dtype=torch.float32).state_dict()
    assert set(got) == set(want)
    for name, tensor in want.items():  # verl's merger writes bf16
        assert torch.equal(got[name].float(), tensor.bfloat16().float()), name


def test_searchlab_eval_policy_evaluates_a_verl_checkpoint(checkpoint: Path, redis_url: str, small_retriever: Proc,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from shared.config import cache_dir

    cache = tmp_path / "cache"  # merges go here; the embedded models stay where they are (the worker loads them)
    cache.mkdir()
    (cache / "models").symlink_to(cache_dir() / "models")
    monkeypatch.setenv("SEARCHLAB_CACHE_DIR", str(cache))
    code = searchlab(["eval", "--dataset", "hotpotqa", "--n", "1", "--methods", "direct", "--policy", str(checkpoint),
                      "--redis-url", redis_url, "--workers", "1", "--retriever-url", small_retriever.url,
                      "--out", str(tmp_path / "eval"), "--json"])
    assert code == 0
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    merged = merged_dir(checkpoint / "global_step_2" / "actor")
    assert set(table) == {"direct", f"policy:{merged}"}
    assert (merged / "config.json").is_file()
