"""The hydra overrides of one verl run (one stage of a recipe), and their check in verl's own config tree.

    overrides(cfg, recipe, stage_files) -> ["data.train_files=...", "actor_rollout_ref.rollout.n=5", ...]
    compose(overrides)                  -> verl's ppo_trainer config, validated as verl's main_ppo does

What the overrides select, beyond the paper's numbers (recipes.py):

- the agent loop: ``rollout.agent.default_agent_loop=searchlab``, the run's ``agent_loop.yaml``
  (``agent_loop_config_path``: verl registers the loops it lists) and the manager that hands the loop
  verl's global step (``agent_loop_manager_class``);
- SGLang with its tokenizer (``skip_tokenizer_init=false``: stop strings such as ``</search>`` are honoured
  server-side) and rollout log-probs (``calculate_log_probs=true``: the loop returns them);
- the reward: our ``compute_score`` through verl's ``naive`` reward-loop manager, which hands it the
  loop's trajectory structure (DAPO's overlong penalty is applied by our reward, not verl's ``dapo`` manager);
- checkpoints and validation: ``save_freq``, ``test_freq``, ``resume_mode=auto``, ``max_actor_ckpt_to_keep``.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.trainer.verl.config import VerlConfig
from services.trainer.verl.loop_config import AGENT_NAME, MANAGER_TARGET
from services.trainer.verl.recipes import ADV_ESTIMATOR, Recipe

log = logging.getLogger(__name__)

REWARD_FN_PATH = Path(__file__).with_name("reward.py")


@dataclass(frozen=True)
class StageFiles:
    """Where one stage's inputs and outputs live."""

    train: Path
    val: Path
    agent_loop: Path  # agent_loop.yaml
    checkpoints: Path  # trainer.default_local_dir
    model_path: str  # the policy this stage starts from
    total_steps: int  # trainer.total_training_steps
    shuffle: bool = True  # False: the data's order is the curriculum (RAMP mask counts)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def overrides(cfg: VerlConfig, recipe: Recipe, files: StageFiles) -> list[str]:
    """Hydra overrides of verl's ``ppo_trainer`` config (``+`` adds keys verl's YAML lacks)."""
    a, r = "actor_rollout_ref", "actor_rollout_ref.rollout"
    algorithm = cfg.algorithm or recipe.algorithm
    clip_low, clip_high = recipe.clip
    out = [
        f"data.train_files={files.train}", f"data.val_files={files.val}", "data.prompt_key=prompt",
        f"data.train_batch_size={cfg.train_batch_size}", f"data.max_prompt_length={cfg.max_prompt_length}",
        f"data.max_response_length={cfg.max_response_length}", "data.return_raw_chat=true",
        "data.filter_overlong_prompts=true", f"data.shuffle={_bool(files.shuffle)}",
        f"{a}.model.path={files.model_path}", f"{a}.model.use_remove_padding=true",
        f"{a}.actor.optim.lr={cfg.lr or recipe.lr}", f"{a}.actor.ppo_mini_batch_size={cfg.ppo_mini_batch_size}",
        f"{a}.actor.ppo_micro_batch_size_per_gpu={cfg.micro_batch_size_per_gpu}",
        f"{a}.actor.use_kl_loss={_bool(_kl(cfg, recipe) > 0)}", f"{a}.actor.kl_loss_coef={_kl(cfg, recipe)}",
        f"{a}.actor.kl_loss_type=low_var_kl", f"{a}.actor.clip_ratio_low={clip_low}",
        f"{a}.actor.clip_ratio_high={clip_high}", f"{a}.actor.loss_agg_mode=token-mean",
        f"{a}.ref.log_prob_micro_batch_size_per_gpu={cfg.micro_batch_size_per_gpu}",
        f"{r}.name=sglang", f"{r}.mode=async", f"{r}.n={cfg.group_size or recipe.group_size}",
        f"{r}.tensor_model_parallel_size={cfg.tensor_parallel}",
        f"{r}.gpu_memory_utilization={cfg.gpu_memory_utilization}",
        f"{r}.log_prob_micro_batch_size_per_gpu={cfg.micro_batch_size_per_gpu}",
        f"{r}.temperature={cfg.temperature}", f"{r}.calculate_log_probs=true", f"{r}.skip_tokenizer_init=false",
        f"{r}.agent.default_agent_loop={AGENT_NAME}", f"{r}.agent.agent_loop_config_path={files.agent_loop}",
        f"{r}.agent.num_workers={cfg.agent_workers}", f"+{r}.agent.agent_loop_manager_class={MANAGER_TARGET}",
        f"algorithm.adv_estimator={ADV_ESTIMATOR[algorithm]}", "algorithm.use_kl_in_reward=false",
        "critic.enable=false",
        f"reward.custom_reward_function.path={REWARD_FN_PATH}", "reward.custom_reward_function.name=compute_score",
        "reward.reward_manager.name=naive",
        *[f"+reward.custom_reward_function.reward_kwargs.{k}={v}" for k, v in reward_kwargs(cfg, recipe).items()],
        f"trainer.total_training_steps={files.total_steps}", f"trainer.n_gpus_per_node={cfg.n_gpus_per_node}",
        f"trainer.nnodes={cfg.nnodes}", f"trainer.project_name={cfg.project}",
        f"trainer.experiment_name={cfg.experiment}", "trainer.logger=[console,tensorboard]",
        f"trainer.save_freq={cfg.save_freq}", f"trainer.test_freq={cfg.test_freq}", "trainer.resume_mode=auto",
        f"trainer.max_actor_ckpt_to_keep={cfg.max_checkpoints}", f"trainer.default_local_dir={files.checkpoints}",
    ]
    return merge_overrides(out, cfg.extra_overrides)


def merge_overrides(base: list[str], extra: list[str]) -> list[str]:
    """``base`` with ``extra`` applied: an extra override of a key already set replaces it in place (one
    value per key on the command line), new keys are appended."""
    key = lambda o: o.split("=", 1)[0].lstrip("+~")  # noqa: E731
    out = list(base)
    for override in extra:
        at = next((i for i, o in enumerate(out) if key(o) == key(override)), None)
        if at is None:
            out.append(override)
        else:
            out[at] = override if not out[at].startswith("+") or override.startswith("+") else "+" + override
    return out


def _kl(cfg: VerlConfig, recipe: Recipe) -> float:
    return recipe.kl_coef if cfg.kl_coef is None else cfg.kl_coef


def reward_kwargs(cfg: VerlConfig, recipe: Recipe) -> dict[str, Any]:
    """What our ``compute_score`` is called with (no secret: the judge's key comes from the environment)."""
    out: dict[str, Any] = {"reward": recipe.reward, "metric": cfg.metric or recipe.metric,
                           "format_weight": recipe.format_weight, "template": recipe.template,
                           "min_searches": recipe.min_searches}
    if out["metric"] == "llm":
        out["judge_url"] = cfg.judge_url
    if (cfg.algorithm or recipe.algorithm) == "dapo":
        out |= {"overlong_max": cfg.max_response_length, "overlong_buffer": cfg.overlong_buffer}
    return out


def compose(overrides_: list[str]) -> Any:
    """verl's ``ppo_trainer`` config with our overrides, as ``main_ppo`` sees it (legacy reward keys
    migrated), checked by verl's own config dataclasses and by the ``validate_config`` it runs first.

    Raises ``ValueError`` naming the problem when an override does not fit verl's schema.
    """
    import verl
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from verl.experimental.reward_loop import migrate_legacy_reward_impl
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    try:
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            cfg = migrate_legacy_reward_impl(hydra_compose(config_name="ppo_trainer", overrides=overrides_))
        omega_conf_to_dataclass(cfg.algorithm)
        omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
        omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        assert isinstance(resolved, DictConfig)
        with contextlib.redirect_stdout(io.StringIO()) as said:  # verl prints its verdict; the CLI's stdout is
            validate_config(resolved, use_reference_policy=need_reference_policy(resolved),  # the command
                            use_critic=need_critic(resolved))
        log.debug("verl validate_config: %s", said.getvalue().strip())
    except (HydraException, OmegaConfBaseException, AssertionError, ValueError, TypeError) as exc:
        raise ValueError(f"verl config rejected: {exc}") from exc
    return cfg
