"""A copy of the repository with nothing beside it (no data folder next to the checkout) runs: the data
loaders, ``searchlab data list`` and an evaluation of one method on a few questions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import REPO_ROOT, cache_dir
from shared.processes import Proc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory, repo_files: list[Path]) -> Path:
    """The repository's files (as a fresh clone has them) in <tmp>/alone/repo: its parent holds nothing else."""
    repo = tmp_path_factory.mktemp("alone") / "repo"
    for path in repo_files:
        target = repo / path.relative_to(REPO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    assert sorted(p.name for p in repo.parent.iterdir()) == ["repo"]
    return repo


def _run(clone: Path, argv: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SEARCHLAB_DATA_DIR", "PYTHONPATH")}
    # the real cache, so the converted SmolLM2 and MiniLM are found; imported data is not used here
    env.update(PYTHONPATH=str(clone), SEARCHLAB_CACHE_DIR=str(cache_dir()), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run([sys.executable, *argv], cwd=clone, env=env, capture_output=True, text=True,
                            timeout=timeout_s)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


LOADERS = """
import json, shared
from shared.config import corpus_path, data_dir
from shared.data import iter_passages, load_questions, load_split
print(json.dumps({"shared": shared.__file__, "data_dir": str(data_dir()), "corpus": str(corpus_path()),
                  "eval": len(load_split("hotpotqa", "eval")), "train": len(load_split("hotpotqa", "train")),
                  "nq": len(load_questions("nq", "eval", 5)), "passages": sum(1 for _ in iter_passages())}))
"""


def test_the_loaders_read_the_data_inside_the_copy(clone: Path) -> None:
    found = json.loads(_run(clone, ["-c", LOADERS]).stdout)
    assert found["shared"] == str(clone / "shared" / "__init__.py")
    assert found["data_dir"] == str(clone / "data")
    assert found["corpus"] == str(clone / "data" / "corpus" / "wiki_passages.jsonl.gz")
    assert (found["eval"], found["train"], found["nq"], found["passages"]) == (348, 338, 5, 17_600)


def test_data_list_sees_the_shipped_sets(clone: Path) -> None:
    found = json.loads(_run(clone, ["-m", "services.cli", "data", "list", "--json"]).stdout)
    assert found["datasets"]["hotpotqa"]["rows"] == 686
    shipped = {name: d for name, d in found["datasets"].items() if d["origin"] == "shipped"}
    assert len(shipped) == 8 and all(d["path"].startswith(str(clone)) for d in shipped.values())
    assert found["corpora"]["wiki_passages"]["passages"] == 17_600


def test_an_evaluation_runs_from_the_copy(clone: Path, redis_server: Proc, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = _run(clone, ["-m", "services.cli", "eval", "--dataset", "hotpotqa", "--n", "2", "--methods", "direct",
                          "--workers", "1", "--redis-url", redis_server.url, "--max-new-tokens", "8",
                          "--max-turns", "1", "--timeout-s", "600", "--out", str(out), "--json"], timeout_s=900)
    report = json.loads((out / "report.json").read_text())
    direct = report["methods"]["direct"]
    assert (direct["n"], direct["errors"], direct["searches"]) == (2, 0, 0)
    assert report["datasets"] == {"hotpotqa": 2}
    assert "em" in json.loads(result.stdout.strip().splitlines()[-1])["direct"]
