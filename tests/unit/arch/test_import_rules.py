"""The layer rules of docs/architecture.md, as import-linter contracts (``[tool.importlinter]`` in
pyproject.toml): the tree keeps them, and each rule catches a planted violation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the project's packages and its import-linter configuration."""
    for package in ("shared", "services"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout or " broken" not in result.stdout
    assert result.stdout.count("KEPT") == 5


@pytest.mark.parametrize(("plants", "contract"), [
    ({"shared/uses_launcher.py": "from services.cluster import load_state"},
     "shared is the common library: it imports nothing from services"),
    ({"services/simulator/reads_index.py": "from services.retriever.engine import Retriever"},
     "services talk over HTTP: no service imports another service's package"),
    ({"services/trainer/rollout/starts_cluster.py": "import services.cluster"},
     "no service imports the entry points (cli, launcher, demo, experiments)"),
    ({"services/trainer/rollout/knows_jobs.py": "from services.trainer.jobs.context import JobContext"},
     "the trainer's rooms: jobs on top"),
    ({"services/trainer/learn/sft.py": "from services.trainer.learn import rl as _rl",  # rl -> sft -> rl
      "services/trainer/learn/rl.py": "from services.trainer.learn import sft as _sft"},
     "no import cycles inside the trainer"),
])
def test_a_planted_violation_breaks_its_contract(tree: Path, plants: dict[str, str], contract: str) -> None:
    for module, line in plants.items():
        path = tree / module
        path.write_text((path.read_text() if path.exists() else "") + "\n" + line + "\n")
    result = lint(tree)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken, result.stdout
