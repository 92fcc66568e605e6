"""k8s/: both overlays render with a real Kustomize and every manifest validates, offline.

Validation uses kubernetes-validate's bundled Kubernetes JSON schemas in strict mode (unknown
fields are errors) for the oldest and newest Kubernetes versions we support. The model checks
then cover what the schemas cannot: references that resolve (ConfigMaps, Secrets and their keys,
PVCs, HPA targets, Service selectors), URLs in the config that reach a Service on the right port,
probes on /ready and /health, resources on every container, GPUs where they belong.

Custom resources (the gpu overlay's KubeRay ``RayCluster``) validate against their CRD's schema, vendored in
``deploy/schemas`` (strict too), and their pod templates against Kubernetes' own ``PodTemplate`` schema.
"""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from deploy_helpers import CRDS, REPO, RenderError, crd_validator, kustomize_build
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

K8S_VERSIONS = ("1.29.0", "1.37.0")  # oldest supported, newest bundled by kubernetes-validate
OVERLAYS = ("cpu", "gpu")
NAMESPACE = "searchlab"
SEARCHLAB = {"retriever": "RETRIEVER", "judge": "JUDGE", "simulator": "SIMULATOR", "trainer": "TRAINER"}  # HTTP
API_KEYS = {f"{prefix}_API_KEY" for prefix in (*SEARCHLAB.values(), "WORKER")}
WORKLOADS = ("Deployment", "StatefulSet")
CLUSTER_SCOPED = ("Namespace",)
URL = re.compile(r"^(?:https?|redis)://(?P<host>[A-Za-z0-9_.-]+):(?P<port>\d+)(?:/|$)")

Manifest = dict[str, Any]


def by_kind(docs: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(workload: Manifest) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_templates(docs: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    """``(name, pod template)`` of every workload, the RayCluster's head and worker groups included."""
    out = [(d["metadata"]["name"], d["spec"]["template"]) for d in docs if d["kind"] in WORKLOADS]
    for rc in (d for d in docs if d["kind"] == "RayCluster"):
        out.append((f"{rc['metadata']['name']}-head", rc["spec"]["headGroupSpec"]["template"]))
        out += [(f"{rc['metadata']['name']}-{g['groupName']}", g["template"]) for g in rc["spec"]["workerGroupSpecs"]]
    return out


def ray_head_services(docs: list[Manifest]) -> dict[str, dict[str, int]]:
    """The head Service KubeRay creates per RayCluster (``<name>-head-svc``), with the head container's ports."""
    out = {}
    for rc in (d for d in docs if d["kind"] == "RayCluster"):
        (head,) = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
        out[f"{rc['metadata']['name']}-head-svc"] = {p["name"]: p["containerPort"] for p in head["ports"]}
    return out


def config(docs: list[Manifest]) -> dict[str, str]:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("searchlab-config")]
    return cm["data"]


def gpus(container: dict[str, Any]) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


# ---- schema validation ---------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_validates(rendered: dict[str, list[Manifest]], overlay: str, version: str) -> None:
    docs = rendered[overlay]
    assert len(docs) >= 20
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            validate_custom(doc, version)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except SchemaNotFoundError as exc:
            pytest.fail(f"{overlay}: no Kubernetes {version} schema for {doc['kind']}: {exc.message}")
        except ValidationError as exc:
            path = ".".join(map(str, exc.path))
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} invalid at {path}: {exc.message}")


def validate_custom(doc: Manifest, version: str) -> None:
    """A custom resource against its vendored CRD; each of its pod templates as a Kubernetes PodTemplate."""
    errors = sorted(crd_validator(doc["apiVersion"], doc["kind"]).iter_errors(doc), key=str)
    if errors:
        where = ".".join(map(str, errors[0].absolute_path))
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid at {where}: {errors[0].message}")
    for name, template in pod_templates([doc]):
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name, "namespace": NAMESPACE},
               "template": template}
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{name}: pod template invalid at {'.'.join(map(str, exc.path))}: {exc.message}")


def _mutations() -> Iterator[tuple[str, str, Any]]:
    def unknown_field(c: dict[str, Any]) -> None:
        c["readinessprobe"] = c.pop("readinessProbe")

    def wrong_type(c: dict[str, Any]) -> None:
        c["ports"][0]["containerPort"] = "eight thousand"

    def missing_required(c: dict[str, Any]) -> None:
        del c["name"]

    yield "unknown-field", "readinessprobe", unknown_field
    yield "wrong-type", "containerPort", wrong_type
    yield "missing-required", "name", missing_required


@pytest.mark.parametrize(("what", "where", "mutate"), list(_mutations()), ids=[m[0] for m in _mutations()])
def test_a_broken_manifest_is_rejected(rendered: dict[str, list[Manifest]], what: str, where: str, mutate: Any) -> None:
    deployment = copy.deepcopy(by_kind(rendered["cpu"], "Deployment")["retriever"])
    kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)  # valid before
    mutate(deployment["spec"]["template"]["spec"]["containers"][0])
    with pytest.raises(ValidationError) as caught:
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    assert where in str(caught.value.message) + ".".join(map(str, caught.value.path))


def test_a_broken_kustomization_is_rejected(k8s_tree: Path, tmp_path: Path) -> None:
    tree = tmp_path / "k8s"
    shutil.copytree(k8s_tree, tree)
    (tree / "base" / "secrets.env").unlink()  # what a fresh clone looks like before setup
    with pytest.raises(RenderError, match="secrets.env"):
        kustomize_build(tree / "overlays" / "cpu")


# ---- references and wiring ------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    docs = rendered[overlay]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']}"
    claims = {t["metadata"]["name"] for d in docs if d["kind"] in WORKLOADS for t in d["spec"].get("volumeClaimTemplates", [])}
    for workload_name, template in pod_templates(docs):
        spec = template["spec"]
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names
                if "secretRef" in source:
                    assert ("Secret", source["secretRef"]["name"]) in names
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["data"], f"{workload_name}: {ref}"
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in spec.get("volumes", [])} | claims, workload_name
    for hpa in by_kind(docs, "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in names
        assert "replicas" not in by_kind(docs, target["kind"])[target["name"]]["spec"], (
            "a Deployment scaled by an HPA must not pin replicas (each apply would reset them)")
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in docs if w["kind"] in WORKLOADS]
    for service in by_kind(docs, "Service").values():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pods), f"Service {service['metadata']['name']}"


def service_port(docs: list[Manifest], host: str, port: int) -> int:
    generated = ray_head_services(docs)
    if host in generated:  # KubeRay's head Service exposes the head container's ports
        assert port in generated[host].values(), f"{host}: port {port} is not one of {generated[host]}"
        return port
    services = by_kind(docs, "Service")
    assert host in services, f"no Service {host}"
    service = services[host]
    workload = next(w for w in docs if w["kind"] in WORKLOADS
                    and service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items())
    container_ports = {p["name"]: p["containerPort"] for c in containers(workload) for p in c.get("ports", [])}
    (port,) = service["spec"]["ports"]
    target = port.get("targetPort", port["port"])
    assert container_ports.get(target, target) in container_ports.values(), f"{host}: targetPort {target}"
    return int(port["port"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_urls_reach_services(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    docs = rendered[overlay]
    data = config(docs)
    checked = 0
    for key, value in data.items():
        match = URL.match(value)
        if match is None or (overlay == "cpu" and "_LLM__" in key):
            continue
        assert service_port(docs, match["host"], int(match["port"])) == int(match["port"]), f"{key}={value}"
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_searchlab_pods_probe_ready_and_health_on_their_port(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    docs = rendered[overlay]
    data = config(docs)
    deployments = by_kind(docs, "Deployment")
    for name, prefix in SEARCHLAB.items():
        (container,) = containers(deployments[name])
        assert container["command"] == ["python", "-m", f"services.{name}"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == int(data[f"{prefix}_PORT"]), name
        assert data[f"{prefix}_HOST"] == "0.0.0.0"
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}, name
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}, name
        assert container["startupProbe"]["httpGet"]["path"] == "/health", name
        spec = deployments[name]["spec"]["template"]["spec"]
        assert spec["enableServiceLinks"] is False, f"{name}: service links would override {prefix}_PORT"
        assert spec["securityContext"]["runAsNonRoot"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/cache", "/cache/models", "/cache/indexes", "/data"} <= mounts, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    for name, template in pod_templates(rendered[overlay]):
        for container in [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]:
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{name}/{container['name']}: {part}"
            assert "readinessProbe" in container, container["name"]
            if container["name"] != "worker":  # see test_workers_probe_redis_and_serve_nothing
                assert "livenessProbe" in container, container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_holds_every_api_key(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    (secret,) = [d for d in rendered[overlay] if d["kind"] == "Secret"]
    assert API_KEYS <= set(secret["data"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_probe_redis_and_serve_nothing(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    worker = by_kind(rendered[overlay], "Deployment")["worker"]
    (container,) = containers(worker)
    assert container["command"] == ["python", "-m", "services.trainer.rollout.worker"]
    assert "ports" not in container and "worker" not in by_kind(rendered[overlay], "Service")
    assert "redis" in " ".join(container["readinessProbe"]["exec"]["command"])
    assert {"/cache", "/cache/models", "/data"} <= {m["mountPath"] for m in container["volumeMounts"]}


def test_gpu_overlay_requests_gpus_and_runs_sglang(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["gpu"]
    deployments = by_kind(docs, "Deployment")
    for name in ("sglang-judge", "sglang-simulator"):
        (container,) = containers(deployments[name])
        args = container["args"]
        assert int(args[args.index("--tp") + 1]) == gpus(container), f"{name}: --tp != nvidia.com/gpu"
        assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health_generate"
        assert container["image"].startswith("lmsysorg/sglang:v")
    judge_args = containers(deployments["sglang-judge"])[0]["args"]
    data = config(docs)
    assert judge_args[judge_args.index("--served-model-name") + 1] == data["JUDGE_LLM__MODEL"] == "Qwen/Qwen2.5-72B-Instruct"
    sim_args = containers(deployments["sglang-simulator"])[0]["args"]
    assert sim_args[sim_args.index("--served-model-name") + 1] == data["SIMULATOR_LLM__MODEL"]
    assert data["JUDGE_LLM__BACKEND"] == data["SIMULATOR_LLM__BACKEND"] == "openai"
    for name in ("trainer", "worker"):
        assert gpus(containers(deployments[name])[0]) == 1, name
    for name in ("retriever", "judge", "simulator"):
        assert gpus(containers(deployments[name])[0]) == 0, name


def test_cpu_overlay_needs_no_gpu(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["cpu"]
    assert not [n for n in by_kind(docs, "Deployment") if n.startswith("sglang")]
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        for container in containers(workload):
            assert gpus(container) == 0, workload["metadata"]["name"]
    data = config(docs)
    assert {data[f"{p}_LLM__BACKEND"] for p in ("JUDGE", "SIMULATOR", "WORKER")} == {"local"}
    assert {c["spec"]["accessModes"][0] for c in by_kind(docs, "PersistentVolumeClaim").values()} == {"ReadWriteOnce"}
    # fits one small node: the requests of the minimum replicas add up to at most 4 CPUs / 16 GiB
    min_replicas = {h["spec"]["scaleTargetRef"]["name"]: h["spec"]["minReplicas"]
                    for h in by_kind(docs, "HorizontalPodAutoscaler").values()}
    cpu = memory = 0.0
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        replicas = workload["spec"].get("replicas", min_replicas.get(workload["metadata"]["name"], 1))
        for container in containers(workload):
            requests = container["resources"]["requests"]
            cpu += replicas * quantity(requests["cpu"])
            memory += replicas * quantity(requests["memory"])
    assert cpu <= 4 and memory <= 16 * 2**30, (cpu, memory / 2**30)


def quantity(value: str | int) -> float:
    """A Kubernetes quantity ("500m", "2", "4Gi") as a number (cores or bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_is_a_persistent_statefulset(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    docs = rendered[overlay]
    redis = by_kind(docs, "StatefulSet")["redis"]
    (container,) = containers(redis)
    assert container["args"][container["args"].index("--appendonly") + 1] == "yes"
    # issue 18: a memory cap below the container limit, and a full Redis refuses writes, never evicts
    assert container["args"][container["args"].index("--maxmemory-policy") + 1] == "noeviction"
    cap = _bytes(container["args"][container["args"].index("--maxmemory") + 1])
    assert 0 < cap < _bytes(container["resources"]["limits"]["memory"])
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert by_kind(docs, "Service")["redis"]["spec"]["ports"][0]["port"] == 6379


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_needs_its_password_and_admits_only_the_projects_pods(rendered: dict[str, list[Manifest]],
                                                                    overlay: str) -> None:
    import base64

    docs = rendered[overlay]
    (container,) = containers(by_kind(docs, "StatefulSet")["redis"])
    assert container["args"][container["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert {refs["REDIS_PASSWORD"]["key"], refs["REDISCLI_AUTH"]["key"]} <= set(data)
    password = data["REDIS_PASSWORD"]
    assert data["SEARCHLAB_REDIS_URL"] == f"redis://:{password}@redis:6379/0" and data["REDISCLI_AUTH"] == password
    assert "SEARCHLAB_REDIS_URL" not in config(docs)  # the URL with its password is in the Secret only
    policies = by_kind(docs, "NetworkPolicy")
    every_pod = policies["searchlab-pods-only"]["spec"]
    assert every_pod["podSelector"] == {} and every_pod["ingress"] == [{"from": [{"podSelector": {}}]}]
    for policy in policies.values():  # nothing admits the world: every rule names its peers
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), policy["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_covers_workers_and_retriever(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    hpas = by_kind(rendered[overlay], "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"worker", "retriever"}
    for hpa in hpas.values():
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_compose_and_k8s_read_the_same_settings() -> None:
    compose = (Path(__file__).resolve().parents[3] / "docker-compose.yml").read_text()
    for env_file in ("k8s/base/searchlab.env", "k8s/overlays/cpu/llm.env", "k8s/overlays/gpu/llm.env"):
        assert env_file in compose, f"docker-compose.yml does not read {env_file}"


# ---- the Ray cluster verl runs on (gpu overlay) ---------------------------------------------------

def test_gpu_overlay_runs_verl_on_a_kuberay_cluster(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["gpu"]
    (rc,) = by_kind(docs, "RayCluster").values()
    gpu_lock = (REPO / "deploy" / "requirements-gpu.lock").read_text().splitlines()
    assert f"ray=={rc['spec']['rayVersion']}" in gpu_lock  # the image's Ray is the version KubeRay is told
    head = rc["spec"]["headGroupSpec"]
    (head_c,) = head["template"]["spec"]["containers"]
    assert head["rayStartParams"]["num-gpus"] == "0" and gpus(head_c) == 0
    assert head_c["readinessProbe"]["httpGet"]["port"] == "dashboard" and "livenessProbe" in head_c
    (group,) = rc["spec"]["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    assert int(group["rayStartParams"]["num-gpus"]) == gpus(worker) == 8
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == worker["resources"]["limits"]["nvidia.com/gpu"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert "readinessProbe" in worker and "livenessProbe" in worker
    for template, container in ((head["template"], head_c), (group["template"], worker)):
        assert container["image"] == "searchlab-gpu:0.1.0"
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
        assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
        cache = next(m for m in container["volumeMounts"] if m["mountPath"] == "/cache")
        assert volumes[cache["name"]]["persistentVolumeClaim"]["claimName"] == "searchlab-cache"  # the trainer's jobs
        assert {s for e in container["envFrom"] for s in (e.get("configMapRef") or e["secretRef"]).values()} == {
            d["metadata"]["name"] for d in docs if d["kind"] in ("ConfigMap", "Secret")}
    address = URL.match(config(docs)["TRAINER_RAY_ADDRESS"])
    assert address is not None and address["host"] == f"{rc['metadata']['name']}-head-svc"
    assert int(address["port"]) == next(p["containerPort"] for p in head_c["ports"] if p["name"] == "dashboard")
    assert "TRAINER_RAY_ADDRESS" not in config(rendered["cpu"])


def test_a_broken_raycluster_is_rejected(rendered: dict[str, list[Manifest]]) -> None:
    (rc,) = by_kind(rendered["gpu"], "RayCluster").values()
    validator = crd_validator(rc["apiVersion"], rc["kind"])
    assert not list(validator.iter_errors(rc))
    for mutate, where in ((lambda r: r["spec"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
                          (lambda r: r["spec"]["headGroupSpec"].update(rayStartParam={}), "rayStartParam"),
                          (lambda r: r["spec"]["workerGroupSpecs"][0].update(replicas="two"), "two")):
        broken = copy.deepcopy(rc)
        mutate(broken)
        errors = [str(e.message) for e in validator.iter_errors(broken)]
        assert errors and any(where in e for e in errors), errors


def test_vendored_kuberay_crd_is_the_documented_one() -> None:
    import gzip
    import hashlib

    readme = (REPO / "deploy" / "schemas" / "README.md").read_text()
    path = CRDS[("ray.io/v1", "RayCluster")]
    assert hashlib.sha256(gzip.open(path).read()).hexdigest() in readme
    assert (REPO / "deploy" / "schemas" / "LICENSE.kuberay").read_text().lstrip().startswith("Apache License")


def _bytes(size: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    size = size.lower().rstrip("b").rstrip("i")
    return int(float(size[:-1]) * units[size[-1]]) if size[-1] in units else int(size)
