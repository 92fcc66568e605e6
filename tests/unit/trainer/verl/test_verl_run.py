"""The verl engine's run directory, checked with verl's own code: every recipe composes in verl's hydra tree
and passes the ``validate_config`` its ``main_ppo`` runs; the agent-loop file verl's registry reads names our
loop; verl's ``RLHFDataset`` loads the parquet; sizes are checked against the data; no key is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.trainer.verl import run as verl_engine
from services.trainer.verl.loop_config import LoopConfig
from services.trainer.verl.overrides import compose
from services.trainer.verl.recipes import RECIPES
from services.trainer.verl.run import VerlConfig
from shared.data import load_split, split_of
from shared.keys import SERVICES

URLS = {"retriever_url": "http://127.0.0.1:8001/", "simulator_url": "http://127.0.0.1:8003",
        "judge_url": "http://127.0.0.1:8002"}
SECRET = "sk-test-secret-4711"


@pytest.fixture(scope="module")
def ramp_samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RAMP samples with 1 to 4 masks of one passage (the data module's own sample builder), as a ramp job
    writes them."""
    from services.trainer.data.export import write_samples
    from services.trainer.data.masking import make_sample
    from services.trainer.data.spans import Span
    from shared.data import Passage

    text = "Paris is the capital of France and lies on the Seine in western Europe."
    spans = [Span(w, text.index(w), text.index(w) + len(w), "entity") for w in ("Paris", "France", "Seine", "Europe")]
    passage = Passage(id="p1", title="Paris", text=text)
    samples = [make_sample(passage, spans[:k], i, strategy="random", selector="heuristic")
               for i, k in enumerate((4, 2, 1, 3, 1, 2, 3, 4, 2, 1, 4, 3, 1, 2, 3, 4))]
    path = tmp_path_factory.mktemp("ramp") / "ramp.jsonl"
    write_samples(path, samples)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, ramp_samples: Path) -> dict[str, verl_engine.VerlRun]:
    mp = pytest.MonkeyPatch()
    mp.setenv("SEARCHLAB_API_KEY", SECRET)  # in the environment while the run is written: must not leak into it
    for service in SERVICES:  # nor any service's own key
        mp.setenv(f"SEARCHLAB_{service.upper()}_API_KEY", f"{SECRET}-{service}")
    out = {}
    for name in RECIPES:
        cfg = VerlConfig(recipe=name, model_path="/models/policy", train_batch_size=8, ramp_samples=str(ramp_samples),
                         **URLS)
        out[name] = verl_engine.prepare(cfg, tmp_path_factory.mktemp(name), ["musique"])
    mp.undo()
    return out


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_composes_and_selects_our_agent_loop(runs: dict[str, verl_engine.VerlRun], name: str) -> None:
    recipe = RECIPES[name]
    for stage in runs[name].stages:
        cfg = compose(stage.overrides)  # hydra + verl's dataclasses + validate_config
        rollout = cfg.actor_rollout_ref.rollout
        assert rollout.agent.default_agent_loop == "searchlab"
        assert rollout.agent.agent_loop_manager_class == "services.trainer.verl.manager.SearchlabAgentLoopManager"
        assert rollout.n == recipe.group_size and rollout.calculate_log_probs and not rollout.skip_tokenizer_init
        [entry] = yaml.safe_load(Path(rollout.agent.agent_loop_config_path).read_text())
        assert entry["_target_"] == "services.trainer.verl.agent_loop.SearchlabAgentLoop"
        loop = LoopConfig.model_validate(entry["searchlab"])
        assert loop.dispatch == "queue" and loop.topk == recipe.topk and loop.search == recipe.search
        assert loop.total_steps == cfg.trainer.total_training_steps == stage.train_rows // 8
        trainer = cfg.trainer
        assert (trainer.save_freq, trainer.test_freq, trainer.resume_mode) == (50, 25, "auto")
        assert cfg.actor_rollout_ref.actor.optim.lr == recipe.lr
        kwargs = cfg.reward.custom_reward_function.reward_kwargs
        assert kwargs.reward == recipe.reward and kwargs.min_searches == 1
        assert cfg.reward.reward_manager.name == "naive"  # the manager that passes the loop's fields on
        assert Path(cfg.reward.custom_reward_function.path).is_file()


def test_the_papers_settings(runs: dict[str, verl_engine.VerlRun]) -> None:
    def cfg(name: str, stage: int = 0) -> Any:
        return compose(runs[name].stages[stage].overrides)

    r1 = cfg("search_r1")
    assert r1.algorithm.adv_estimator == "grpo" and r1.actor_rollout_ref.actor.kl_loss_coef == 0.001
    assert r1.reward.custom_reward_function.reward_kwargs.metric == "em"
    research = cfg("research")
    assert research.reward.custom_reward_function.reward_kwargs.template == "research"
    zs = yaml.safe_load(Path(cfg("zerosearch").actor_rollout_ref.rollout.agent.agent_loop_config_path).read_text())
    assert zs[0]["searchlab"]["search"] == "simulator"
    assert zs[0]["searchlab"]["noise"] == {"start": 0.0, "end": 0.5, "base": 4.0}
    ms_ramp, ms_qa = cfg("masksearch", 0), cfg("masksearch", 1)
    actor = ms_qa.actor_rollout_ref.actor
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.loss_agg_mode) == (0.2, 0.28, "token-mean")
    kwargs = ms_qa.reward.custom_reward_function.reward_kwargs
    assert (kwargs.metric, kwargs.judge_url, kwargs.overlong_buffer) == ("llm", "http://127.0.0.1:8002", 512)
    assert ms_ramp.data.shuffle is False  # the RAMP data's order is the mask curriculum
    assert ms_qa.actor_rollout_ref.model.path == str(runs["masksearch"].stages[0].dir / "hf")


def test_masksearch_ramp_stage_runs_the_mask_curriculum(runs: dict[str, verl_engine.VerlRun]) -> None:
    import pandas as pd

    ramp = pd.read_parquet(runs["masksearch"].stages[0].train_parquet)
    masks = [e["n_masks"] for e in ramp["extra_info"]]
    assert masks == sorted(masks) and set(masks) == {1, 2, 3, 4}
    script = (runs["masksearch"].out_dir / "command.sh").read_text()
    assert script.count("verl.trainer.main_ppo") == 2
    assert "services.trainer.verl.checkpoint merge" in script  # stage 2 starts from stage 1's merged weights


def test_a_batch_larger_than_the_data_names_both_numbers(tmp_path: Path) -> None:
    cfg = VerlConfig(recipe="research", model_path="/models/policy", train_batch_size=512, **URLS)
    rows = len(load_split("musique", "train"))
    with pytest.raises(ValueError, match=rf"train_batch_size=512 is larger than the {rows} training rows"):
        verl_engine.prepare(cfg, tmp_path)


def test_missing_services_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="simulator_url"):
        verl_engine.prepare(VerlConfig(recipe="zerosearch", model_path="/m", retriever_url="http://r"), tmp_path)
    with pytest.raises(ValueError, match="judge"):
        verl_engine.prepare(VerlConfig(recipe="masksearch", model_path="/m", retriever_url="http://r"), tmp_path)


def test_bad_override_is_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="verl config rejected"):
        compose(["actor_rollout_ref.actor.no_such_field=1"])


def test_training_data_is_train_part_only(runs: dict[str, verl_engine.VerlRun]) -> None:
    import pandas as pd

    stage = runs["search_r1"].stages[0]
    train, val = pd.read_parquet(stage.train_parquet), pd.read_parquet(stage.val_parquet)
    assert len(train) == len(load_split("musique", "train")) and len(val) == len(load_split("musique", "eval"))
    assert {split_of("musique", e["id"]) for e in train["extra_info"]} == {"train"}
    assert not set(e["id"] for e in train["extra_info"]) & set(e["id"] for e in val["extra_info"])


def test_no_key_in_any_written_file(runs: dict[str, verl_engine.VerlRun]) -> None:
    for run in runs.values():
        files = [p for p in run.out_dir.rglob("*") if p.is_file()]
        assert any(p.suffix == ".parquet" for p in files) and any(p.name == "command.sh" for p in files)
        for path in files:
            assert SECRET.encode() not in path.read_bytes(), path  # the prefix of every service's key too
        report = json.loads((run.out_dir / "run.json").read_text())
        assert report["recipe"] == run.recipe and report["commands"]


def test_rlhf_dataset_loads_our_parquet(runs: dict[str, verl_engine.VerlRun], smollm2_path: Path) -> None:
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    stage = runs["search_r1"].stages[0]
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_path))
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 1024, "filter_overlong_prompts": True,
                               "return_raw_chat": True, "truncation": "error"})
    dataset = RLHFDataset(str(stage.train_parquet), tokenizer, config)
    assert len(dataset) == len(load_split("musique", "train"))  # none filtered as overlong
    item = dataset[0]
    messages = item["raw_prompt"]  # verl's agent loop applies the chat template to these
    assert messages[0]["role"] == "user"
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    assert "<search>" in text and "Question:" in text
    assert item["index"] == 0 and item["extra_info"]["question"]


def test_dry_run_prints_the_command_and_writes_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = verl_engine.main(["--recipe", "search_r1", "--out", str(tmp_path), "--model", "/models/policy",
                             "--retriever-url", "http://127.0.0.1:8001", "--datasets", "musique",
                             "--train-batch-size", "8", "--override", "trainer.val_before_train=false",
                             "--override", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4", "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    assert "verl.trainer.main_ppo" in out and "trainer.val_before_train=false" in out
    assert out.count("ppo_micro_batch_size_per_gpu=") == 1 and "actor.ppo_micro_batch_size_per_gpu=4" in out
    assert (tmp_path / "command.sh").read_text() == out
    assert verl_engine.main(["--recipe", "search_r1", "--out", str(tmp_path / "x"), "--model", "/m",
                             "--retriever-url", "http://r", "--datasets", "musique", "--dry-run"]) == 2


def test_the_cli_mixes_real_and_simulated_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verl_engine.main(["--recipe", "zerosearch", "--out", str(tmp_path), "--model", "/models/policy",
                             "--retriever-url", "http://r:8001", "--simulator-url", "http://s:8003", "--search", "mix",
                             "--real-fraction", "0.3", "--datasets", "musique", "--train-batch-size", "8",
                             "--dry-run"]) == 0
    capsys.readouterr()
    [entry] = yaml.safe_load((tmp_path / "stages" / "1-qa" / "agent_loop.yaml").read_text())
    assert (entry["searchlab"]["search"], entry["searchlab"]["real_fraction"]) == ("mix", 0.3)


def test_importing_the_loop_keeps_the_runs_registry_entry(runs: dict[str, verl_engine.VerlRun]) -> None:
    """verl reads agent_loop.yaml into its registry, then imports our module inside the first sample's
    instantiation; the import must not replace the entry that carries the run's config (a fresh interpreter,
    as in a verl agent-loop worker)."""
    import subprocess
    import sys

    path = runs["search_r1"].stages[0].agent_loop
    code = ("from omegaconf import OmegaConf\n"
            "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry as registry\n"
            f"for entry in OmegaConf.load({str(path)!r}):\n"
            "    registry[entry.name] = entry\n"  # what AgentLoopWorker.__init__ does
            "import services.trainer.verl.agent_loop\n"
            "print(registry['searchlab']['searchlab']['retriever_url'])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == URLS["retriever_url"]


def test_a_verl_run_logs_to_tensorboard_in_its_run_folder(runs: dict[str, verl_engine.VerlRun]) -> None:
    run = runs["search_r1"]
    assert "tensorboard" in list(compose(run.stages[0].overrides).trainer.logger)
    script = (run.out_dir / "command.sh").read_text()
    assert f'TENSORBOARD_DIR:-{run.out_dir}/tensorboard' in script  # beside a local job's events
