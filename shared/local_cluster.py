"""The state file of the local cluster that ``searchlab up`` starts: who is running, where, with which keys.

``services/cluster.py`` writes it (``<cache>/cluster/cluster.json``, or ``$SEARCHLAB_CLUSTER_RUN_DIR``);
clients read it through :func:`load_state` (the notebook SDK's ``Cluster.local()``, ``searchlab eval``,
``searchlab train``), so nothing outside the entry points imports the launcher. It holds each service's own
key (``api_keys``), so it is readable by its owner only (mode 0600) and its repr leaves them out.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared.config import cache_dir
from shared.keys import SERVICES, ServiceKeys, key_env

STATE_FILE = "cluster.json"


@dataclass
class ClusterState:
    run_dir: str
    urls: dict[str, str] = field(default_factory=dict)  # service name (and "redis") -> URL
    pids: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    api_keys: dict[str, str] = field(default_factory=dict, repr=False)  # service name -> its bearer token
    started_at: float = 0.0
    restarts: dict[str, int] = field(default_factory=dict)  # process name -> times the supervisor restarted it
    gave_up: list[str] = field(default_factory=list)  # processes the supervisor stopped restarting (too many deaths)

    def keys(self) -> ServiceKeys:
        return ServiceKeys.coerce(self.api_keys)

    def env(self) -> dict[str, str]:
        """Environment a client process needs to reach this cluster (``SEARCHLAB_<SERVICE>_URL`` / ``_API_KEY``)."""
        out = {f"SEARCHLAB_{name.upper()}_URL": self.urls.get(name, "") for name in ("redis", *SERVICES)}
        return {k: v for k, v in out.items() if v} | key_env(self.keys())


def run_dir(configured: Path | None = None) -> Path:
    """The cluster's folder (logs, state): ``configured``, else ``$SEARCHLAB_CLUSTER_RUN_DIR``, else the cache."""
    env = os.environ.get("SEARCHLAB_CLUSTER_RUN_DIR")
    path = configured or (Path(env) if env else cache_dir() / "cluster")
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_path(configured_run_dir: Path | None = None) -> Path:
    return run_dir(configured_run_dir) / STATE_FILE


def load_state(configured_run_dir: Path | None = None) -> ClusterState | None:
    """The running local cluster's state, or None when none was started."""
    path = state_path(configured_run_dir)
    if not path.is_file():
        return None
    return ClusterState(**_upgrade(json.loads(path.read_text())))


def _upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A state file written before each service had its own key held one ``api_key`` for all four."""
    if "api_key" in raw:
        key = raw.pop("api_key")
        raw.setdefault("api_keys", {s: key for s in SERVICES} if key else {})
    return raw


def save_state(state: ClusterState, configured_run_dir: Path | None = None) -> Path:
    """Write the state atomically (the supervisor rewrites it while others read it), readable by its owner
    only (it holds the services' keys)."""
    path = state_path(configured_run_dir)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(asdict(state), indent=2))
    partial.chmod(0o600)
    partial.replace(path)
    return path
