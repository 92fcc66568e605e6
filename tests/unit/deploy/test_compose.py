"""docker-compose.yml: valid against the Compose Specification schema, offline, and wired right.

Schema validation runs check-jsonschema on the vendored schema (deploy/schemas/compose-spec.json),
on the file as written and after Compose's variable interpolation (which Compose performs before
it validates). The model checks then do what `docker compose config` would refuse or what would
break at run time: dependencies on services outside the profile, health-gated dependencies on
services without a healthcheck, undeclared volumes, URLs that point at no service or the wrong
port, GPUs in the cpu profile.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import REPO, read_env_file, run, tool

COMPOSE = REPO / "docker-compose.yml"
SCHEMA = REPO / "deploy" / "schemas" / "compose-spec.json"
ENV_EXAMPLE = REPO / "deploy" / "compose.env.example"
PROFILES = ("cpu", "gpu")
MODULE_PREFIX = {
    "services.retriever": "RETRIEVER",
    "services.judge": "JUDGE",
    "services.simulator": "SIMULATOR",
    "services.trainer": "TRAINER",
    "services.trainer.rollout.worker": "WORKER",
}
SECRETS = ("SEARCHLAB_API_KEY", "SEARCHLAB_REDIS_PASSWORD")
URL = re.compile(r"^(?:https?|redis)://(?:[^@/]*@)?(?P<host>[A-Za-z0-9_.-]+):(?P<port>\d+)(?:/|$)")


# ---- Compose variable interpolation (compose-spec "Interpolation") ----------------------------

class InterpolationError(ValueError):
    pass


_TOKEN = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


def interpolate(text: str, env: dict[str, str]) -> str:
    """``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``, ``${VAR:?e}``, ``${VAR?e}``, ``${VAR:+a}``, ``${VAR+a}``."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        if braced is None:
            raise InterpolationError(f"invalid interpolation format: ${{{match['braced']}}}")
        name, op, arg = braced["name"], braced["op"], interpolate(braced["arg"] or "", env)
        value = env.get(name)
        if op is None:
            return value or ""
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise InterpolationError(f"required variable {name} is missing a value: {arg}")
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return arg if value is not None else ""
        return value or ""

    return _TOKEN.sub(replace, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


# ---- the Compose model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    env = read_env_file(ENV_EXAMPLE)
    for secret in SECRETS:
        assert env[secret], f"the example must show the required secret {secret}"
    return env


@pytest.fixture(scope="module")
def model(example_env: dict[str, str]) -> dict[str, Any]:
    return interpolate_tree(yaml.safe_load(COMPOSE.read_text()), example_env)


def active(model: dict[str, Any], profile: str) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in model["services"].items()
            if not svc.get("profiles") or profile in svc["profiles"]}


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    files = svc.get("env_file", [])
    for file in [files] if isinstance(files, str) else files:
        env.update(read_env_file(REPO / (file if isinstance(file, str) else file["path"])))
    declared = svc.get("environment") or {}
    if isinstance(declared, list):
        declared = dict(item.split("=", 1) for item in declared)
    env.update({key: str(value) for key, value in declared.items()})
    return env


def prefix_of(svc: dict[str, Any]) -> str | None:
    command = svc.get("command") or []
    if len(command) >= 3 and command[:2] == ["python", "-m"]:
        return MODULE_PREFIX[command[2]]
    return None


def listening_port(svc: dict[str, Any]) -> int:
    """The port a service's URLs name: its HTTP port (a Ray head's: the dashboard, where the Jobs API is)."""
    prefix = prefix_of(svc)
    if prefix is not None:
        return int(service_env(svc)[f"{prefix}_PORT"])
    command = svc.get("command") or []
    if command[:2] == ["ray", "start"] and "--head" in command:
        return int(command[command.index("--dashboard-port") + 1])
    if "--port" in command:
        return int(command[command.index("--port") + 1])
    if str(svc.get("image", "")).startswith("redis:"):
        return 6379
    raise AssertionError(f"don't know the port of {svc}")


def dns_names(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Host name -> service, for service names and network aliases."""
    names = {name: name for name in services}
    for name, svc in services.items():
        for net in (svc.get("networks") or {}).values():
            for alias in (net or {}).get("aliases", []):
                assert alias not in names, f"{alias} is both a service and an alias"
                names[alias] = name
    return names


def gpu_devices(svc: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = ((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    return [d for d in reservations.get("devices", []) if "gpu" in d.get("capabilities", [])]


# ---- schema validation ---------------------------------------------------------------------

def check_jsonschema(*instances: Path) -> tuple[int, str]:
    result = run([tool("check-jsonschema"), "--schemafile", str(SCHEMA), *map(str, instances)])
    return result.returncode, result.stdout + result.stderr


def test_vendored_schema_is_the_documented_one() -> None:
    readme = (REPO / "deploy" / "schemas" / "README.md").read_text()
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() in readme
    assert json.loads(SCHEMA.read_text())["title"] == "Compose Specification"


def test_compose_file_matches_compose_spec(model: dict[str, Any], tmp_path: Path) -> None:
    interpolated = tmp_path / "compose.interpolated.json"
    interpolated.write_text(json.dumps(model))
    code, output = check_jsonschema(COMPOSE, interpolated)
    assert code == 0, output


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda m: m["services"]["redis"].update(restart_policy="always"), "restart_policy"),
        (lambda m: m["services"]["retriever"]["healthcheck"].update(test={"cmd": "true"}), "healthcheck"),
        (lambda m: m["services"]["trainer"]["depends_on"]["redis"].update(condition="when_ready"), "condition"),
        (lambda m: m["volumes"].update({"Bad Name": None}), "Bad Name"),
    ],
    ids=["unknown-service-key", "healthcheck-test-type", "depends-on-condition", "volume-name"],
)
def test_broken_compose_file_is_rejected(model: dict[str, Any], tmp_path: Path, mutate: Any, error: str) -> None:
    broken = json.loads(json.dumps(model))
    mutate(broken)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    code, output = check_jsonschema(path)
    assert code != 0
    assert error in output


# ---- interpolation --------------------------------------------------------------------------

def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("$$SET ${SET} $SET", env) == "$SET x x"
    assert interpolate("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", env) == "d d  d"
    assert interpolate("${SET:+a}|${EMPTY:+a}|${EMPTY+a}", env) == "a||a"
    assert interpolate("${EMPTY?e}", env) == ""
    for bad in ("${UNSET:?needed}", "${EMPTY:?needed}", "${UNSET?needed}"):
        with pytest.raises(InterpolationError, match="needed"):
            interpolate(bad, env)
    with pytest.raises(InterpolationError, match="invalid"):
        interpolate("${NOT VALID}", env)


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_each_secret_is_required(example_env: dict[str, str], secret: str, value: str | None) -> None:
    env = {k: v for k, v in example_env.items() if k != secret}
    if value is not None:
        env[secret] = value
    with pytest.raises(InterpolationError, match=secret):
        interpolate_tree(yaml.safe_load(COMPOSE.read_text()), env)


def test_defaults_need_nothing_but_the_secrets() -> None:
    model = interpolate_tree(yaml.safe_load(COMPOSE.read_text()), dict.fromkeys(SECRETS, "k"))
    assert model["services"]["worker"]["deploy"]["replicas"] == "2"
    assert model["services"]["sglang-judge"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "4"


# ---- the model, per profile -----------------------------------------------------------------

@pytest.mark.parametrize("profile", PROFILES)
def test_dependencies_are_health_gated_and_in_profile(model: dict[str, Any], profile: str) -> None:
    services = active(model, profile)
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{profile}: {name} depends on {dep}, which the profile does not run"
            assert spec["condition"] == "service_healthy", f"{name} -> {dep}"
            assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health, which has no healthcheck"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_service_has_a_healthcheck_and_limits(model: dict[str, Any], profile: str) -> None:
    for name, svc in active(model, profile).items():
        assert svc.get("healthcheck", {}).get("test"), name
        resources = (svc.get("deploy") or {}).get("resources") or {}
        assert resources.get("limits") or gpu_devices(svc), f"{name} has no resource limits or reservations"


@pytest.mark.parametrize("profile", PROFILES)
def test_volumes_and_files_exist(model: dict[str, Any], profile: str) -> None:
    declared = set(model.get("volumes") or {})
    for name, svc in active(model, profile).items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
        files = svc.get("env_file", [])
        for file in [files] if isinstance(files, str) else files:
            assert (REPO / file).is_file(), f"{name}: env_file {file} is missing"
        if "build" in svc:
            assert (REPO / svc["build"]["context"] / svc["build"].get("dockerfile", "Dockerfile")).is_file()


@pytest.mark.parametrize("profile", PROFILES)
def test_service_urls_point_at_running_services(model: dict[str, Any], profile: str) -> None:
    services = active(model, profile)
    names = dns_names(services)
    checked = 0
    for name, svc in services.items():
        for key, value in service_env(svc).items():
            match = URL.match(value)
            if match is None:
                continue
            host, port = match["host"], int(match["port"])
            if key.startswith(("JUDGE_LLM__", "SIMULATOR_LLM__", "WORKER_LLM__")) and profile == "cpu":
                continue  # the local backend ignores BASE_URL
            assert host in names, f"{profile}: {name}.{key}={value}: no service or alias {host}"
            assert listening_port(services[names[host]]) == port, f"{profile}: {name}.{key}={value}"
            checked += 1
    assert checked >= 6  # redis, retriever, judge, simulator URLs of the trainer and simulator


@pytest.mark.parametrize("profile", PROFILES)
def test_searchlab_services_bind_publish_and_probe_their_port(model: dict[str, Any], profile: str) -> None:
    for name, svc in active(model, profile).items():
        prefix = prefix_of(svc)
        if prefix is None:
            continue
        env = service_env(svc)
        assert env[f"{prefix}_API_KEY"], f"{name} runs without its API key"
        mounts = {v.split(":")[1] for v in svc["volumes"]}
        assert {"/cache", "/data"} <= mounts, f"{name}: models/indexes must come from volumes"
        if prefix == "WORKER":  # no HTTP server: healthy when the episode stream's Redis answers
            assert "redis" in " ".join(svc["healthcheck"]["test"]) and "ports" not in svc, name
            continue
        port = int(env[f"{prefix}_PORT"])
        assert env[f"{prefix}_HOST"] == "0.0.0.0", name
        assert f"http://127.0.0.1:{port}/" in " ".join(svc["healthcheck"]["test"]), name
        for mapping in svc.get("ports", []):
            assert int(str(mapping).rsplit(":", 1)[1]) == port, f"{name} publishes {mapping}"


def test_gpu_profile_runs_sglang_on_gpus(model: dict[str, Any]) -> None:
    services = active(model, "gpu")
    for name in ("sglang-judge", "sglang-simulator"):
        svc = services[name]
        command = svc["command"]
        tp = command[command.index("--tp") + 1]
        assert str(gpu_devices(svc)[0]["count"]) == tp, f"{name}: GPUs reserved != tensor parallel size"
        assert "/health_generate" in " ".join(svc["healthcheck"]["test"])
        assert svc["image"].startswith("lmsysorg/sglang:")
    assert "Qwen2.5-72B-Instruct" in " ".join(services["sglang-judge"]["command"])
    for name in ("trainer", "worker"):
        assert gpu_devices(services[name]), f"{name} has no GPU in the gpu profile"
    judge_env = service_env(services["judge"])
    assert judge_env["JUDGE_LLM__BACKEND"] == "openai"
    assert judge_env["JUDGE_LLM__MODEL"] == "Qwen/Qwen2.5-72B-Instruct"
    assert service_env(services["simulator"])["SIMULATOR_LLM__BACKEND"] == "openai"


def test_cpu_profile_needs_no_gpu_and_no_sglang(model: dict[str, Any]) -> None:
    services = active(model, "cpu")
    assert {"redis", "retriever"} <= set(services)
    assert {"judge", "simulator", "trainer"} <= set(dns_names(services))
    for name, svc in services.items():
        assert not gpu_devices(svc), f"{name} reserves a GPU in the cpu profile"
        assert "sglang" not in str(svc.get("image", "")), name
        for key, value in service_env(svc).items():
            if key.endswith("_LLM__BACKEND"):
                assert value == "local", f"{name}: {key}={value}"


def test_workers_are_replicated(model: dict[str, Any]) -> None:
    for name in ("worker", "worker-cpu"):
        assert int(model["services"][name]["deploy"]["replicas"]) >= 2
        assert "ports" not in model["services"][name], "replicas cannot share a published port"


def test_redis_needs_its_password_and_every_client_sends_it(model: dict[str, Any], example_env: dict[str, str]) -> None:
    redis = model["services"]["redis"]
    password = example_env["SEARCHLAB_REDIS_PASSWORD"]
    assert redis["command"][redis["command"].index("--requirepass") + 1] == password
    assert redis["environment"]["REDISCLI_AUTH"] == password  # its healthcheck's redis-cli
    clients = 0
    for name, svc in model["services"].items():
        url = service_env(svc).get("SEARCHLAB_REDIS_URL")
        if url is not None:
            assert url == f"redis://:{password}@redis:6379/0", name
            clients += 1
    assert clients >= 8  # retriever, judge, simulator, trainer, workers, in both profiles


def test_redis_persists_append_only_on_a_volume(model: dict[str, Any]) -> None:
    redis = model["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.split(":")[1] == "/data" and v.split(":")[0] in model["volumes"] for v in redis["volumes"])


def test_gpu_profile_runs_a_ray_cluster_for_verl(model: dict[str, Any]) -> None:
    services = active(model, "gpu")
    head, worker = services["ray-head"], services["ray-worker"]
    gpu_lock = (REPO / "deploy" / "requirements-gpu.lock").read_text()
    for svc in (head, worker):
        assert svc["build"]["dockerfile"] == "Dockerfile.gpu" and (REPO / "Dockerfile.gpu").is_file()
        assert "ray==" in gpu_lock and svc["command"][:2] == ["ray", "start"]
        assert any(v.split(":")[1] == "/cache" for v in svc["volumes"])  # the trainer's job folders
        assert svc["shm_size"]
    assert not gpu_devices(head) and head["command"][head["command"].index("--num-gpus") + 1] == "0"
    (device,) = gpu_devices(worker)
    command = worker["command"]
    assert str(device["count"]) == command[command.index("--num-gpus") + 1] == "8"
    assert command[command.index("--address") + 1] == "ray-head:6379"
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    trainer_env = service_env(services["trainer"])
    address = URL.match(trainer_env["TRAINER_RAY_ADDRESS"])
    assert address is not None and dns_names(services)[address["host"]] == "ray-head"
    assert "ray-head" not in active(model, "cpu") and "TRAINER_RAY_ADDRESS" not in service_env(
        model["services"]["trainer-cpu"])


def test_redis_memory_is_capped_below_its_limit_and_never_evicts(model: dict[str, Any]) -> None:
    """Issue 18: without maxmemory Redis grows until the container is OOM-killed; with an evicting
    policy queue data would vanish silently. noeviction makes a full Redis refuse writes loudly."""
    redis = model["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    cap = _bytes(command[command.index("--maxmemory") + 1])
    assert 0 < cap < _bytes(redis["deploy"]["resources"]["limits"]["memory"])


def _bytes(size: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    size = size.lower().rstrip("b").rstrip("i")
    return int(float(size[:-1]) * units[size[-1]]) if size[-1] in units else int(size)
