"""`render`: schema-valid Kubernetes objects from a Manifest, and refusals that name the problem."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from appliance.bundle.manifest import Service
from appliance.errors import ManifestError, NodeCapacityError, PlacementError
from appliance.k8s import RenderOptions, render
from appliance.k8s.render import KUSTOMIZATION, TOKEN_DIR
from runtime.settings import from_env
from tests.k8s.manifests import MANIFEST_DIGEST, make_manifest, model

K8S_VERSION = "1.30"  # the oldest Kubernetes the rendered objects are promised to fit


def docs(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every rendered object keyed by 'Kind/name'."""
    out: dict[str, dict[str, Any]] = {}
    for name, text in files.items():
        if name == KUSTOMIZATION:
            continue
        for doc in yaml.safe_load_all(text):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def container(objs: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return objs[f"Deployment/{name}"]["spec"]["template"]["spec"]["containers"][0]


@pytest.fixture
def files() -> dict[str, str]:
    return render(make_manifest(), RenderOptions(MANIFEST_DIGEST, node_gpu_memory_mib=8192))


def test_rendered_objects_pass_strict_kubernetes_schema(files: dict[str, str]) -> None:
    objs = docs(files)
    assert sorted(objs) == [
        "Deployment/demo-cnn", "Deployment/demo-mlp",
        "PodDisruptionBudget/demo-cnn", "PodDisruptionBudget/demo-mlp",
        "Service/demo-cnn", "Service/demo-mlp",
    ]
    for key, obj in objs.items():
        assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) == K8S_VERSION, key


def test_schema_check_is_live_and_rejects_a_misspelt_field(files: dict[str, str]) -> None:
    bad = copy.deepcopy(docs(files)["Deployment/demo-mlp"])
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy "] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_every_rendered_file_and_the_namespace() -> None:
    files = render(make_manifest(), RenderOptions(MANIFEST_DIGEST, namespace="inference"))
    kust = yaml.safe_load(files[KUSTOMIZATION])
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    assert kust["namespace"] == "inference"
    assert sorted(kust["resources"]) == sorted(f for f in files if f != KUSTOMIZATION)


def test_gpu_limits_follow_each_services_gpu_policy(files: dict[str, str]) -> None:
    objs = docs(files)
    cnn = container(objs, "demo-cnn")["resources"]  # required
    mlp = container(objs, "demo-mlp")["resources"]  # preferred
    assert cnn["limits"]["nvidia.com/gpu"] == "1"
    assert mlp["limits"]["nvidia.com/gpu"] == "1"
    # the runtime knows the policy: required on the CPU keeps the pod not ready, saying why
    policy = {n: next(e["value"] for e in container(objs, f"demo-{n}")["env"]
                      if e["name"] == "RUNTIME_GPU_POLICY") for n in ("cnn", "mlp")}
    assert policy == {"cnn": "required", "mlp": "preferred"}
    none = make_manifest(services=[Service("mlp", "mlp", ["mlp"], gpu="none"),
                                   Service("cnn", "cnn", ["cnn"], port=8001, gpu="required")])
    objs = docs(render(none, RenderOptions(MANIFEST_DIGEST)))
    assert "nvidia.com/gpu" not in container(objs, "demo-mlp")["resources"]["limits"]
    assert "tolerations" not in objs["Deployment/demo-mlp"]["spec"]["template"]["spec"]


def test_cpu_only_render_drops_gpus_for_preferred_and_refuses_required() -> None:
    only_preferred = make_manifest(services=[Service("mlp", "mlp", ["mlp"], gpu="preferred")])
    objs = docs(render(only_preferred, RenderOptions(MANIFEST_DIGEST, cpu_only=True)))
    assert "nvidia.com/gpu" not in container(objs, "demo-mlp")["resources"]["limits"]
    assert {"name": "RUNTIME_GPU_POLICY", "value": "none"} in container(objs, "demo-mlp")["env"]
    with pytest.raises(PlacementError, match=r"'cnn' requires a GPU.*--cpu-only"):
        render(make_manifest(), RenderOptions(MANIFEST_DIGEST, cpu_only=True))


def test_probes_hit_the_v2_health_endpoints(files: dict[str, str]) -> None:
    c = container(docs(files), "demo-mlp")
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    # The runtime's default 127.0.0.1 would fail every probe from the kubelet.
    assert {"name": "RUNTIME_HOST", "value": "0.0.0.0"} in c["env"]


def test_pods_require_the_token_from_a_mounted_secret_never_an_env_value(
        files: dict[str, str], tmp_path: Path) -> None:
    objs = docs(files)
    for svc in ("mlp", "cnn"):
        pod = objs[f"Deployment/demo-{svc}"]["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["RUNTIME_TOKEN_FILE"] == f"{TOKEN_DIR}/token" and "RUNTIME_TOKEN" not in env
        assert c["volumeMounts"] == [{"name": "token", "mountPath": TOKEN_DIR,
                                      "readOnly": True}]
        assert pod["volumes"] == [{"name": "token", "secret": {
            "secretName": "appliance-token", "items": [{"key": "token", "path": "token"}],
            "defaultMode": 0o444}}]
    # the runtime reads that variable as its token file (one token a line, for rotation)
    token = tmp_path / "token"
    token.write_text("t-old\nt-new\n")
    settings = from_env({"RUNTIME_TOKEN_FILE": str(token)})
    assert settings.token_file == token
    # the Ingress checks the token instead: nothing mounted, nothing required
    bare = docs(render(make_manifest(), RenderOptions(MANIFEST_DIGEST, token_secret=None)))
    pod = bare["Deployment/demo-mlp"]["spec"]["template"]["spec"]
    assert "volumes" not in pod and "volumeMounts" not in pod["containers"][0]
    assert all(e["name"] != "RUNTIME_TOKEN_FILE" for e in pod["containers"][0]["env"])


def test_images_are_pinned_by_digest_and_never_pulled(files: dict[str, str]) -> None:
    m = make_manifest()
    objs = docs(files)
    for svc in ("mlp", "cnn"):
        c = container(objs, f"demo-{svc}")
        assert c["image"] == (f"docker.io/appliance/demo-{svc}@"
                              f"{m.image(svc).manifest_digest}")
        assert c["imagePullPolicy"] == "Never"
    text = "".join(files.values())
    assert "IfNotPresent" not in text and "Always" not in text


def test_service_exposes_the_manifest_port_on_the_runtime_port(files: dict[str, str]) -> None:
    svc = docs(files)["Service/demo-cnn"]["spec"]
    assert svc["ports"] == [{"name": "http", "port": 8001, "targetPort": "http",
                             "protocol": "TCP"}]
    assert svc["selector"] == {"app.kubernetes.io/name": "demo-cnn",
                               "app.kubernetes.io/instance": "demo"}


def test_labels_carry_sequence_and_digest_but_selectors_stay_stable() -> None:
    old = docs(render(make_manifest(sequence=3), RenderOptions(MANIFEST_DIGEST)))
    new_digest = "sha256:" + "ab" * 32
    new = docs(render(make_manifest(sequence=4), RenderOptions(new_digest)))
    dep_old, dep_new = old["Deployment/demo-mlp"], new["Deployment/demo-mlp"]
    pod_new = dep_new["spec"]["template"]["metadata"]
    assert pod_new["labels"]["appliance/sequence"] == "4"
    assert pod_new["labels"]["appliance/manifest"] == "sha256-" + "ab" * 16
    assert pod_new["annotations"]["appliance/manifest-digest"] == new_digest
    assert dep_old["metadata"]["labels"]["appliance/sequence"] == "3"
    # A Deployment's selector is immutable: a new release must not change it.
    assert dep_old["spec"]["selector"] == dep_new["spec"]["selector"]
    pdb = "PodDisruptionBudget/demo-mlp"
    assert old[pdb]["spec"] == new[pdb]["spec"]


def test_memory_request_grows_with_the_weights(files: dict[str, str]) -> None:
    objs = docs(files)
    # 512 MiB runtime + 2 x weights (3 MiB for mlp, 40 MiB for cnn)
    assert container(objs, "demo-mlp")["resources"]["requests"]["memory"] == "518Mi"
    assert container(objs, "demo-cnn")["resources"]["requests"]["memory"] == "592Mi"
    assert container(objs, "demo-cnn")["resources"]["limits"]["memory"] == "1184Mi"


def test_render_is_deterministic() -> None:
    opts = RenderOptions(MANIFEST_DIGEST, node_gpu_memory_mib=8192, replicas=2)
    assert render(make_manifest(), opts) == render(make_manifest(), opts)


def test_refuses_a_model_that_needs_more_gpu_memory_than_a_node_has() -> None:
    with pytest.raises(NodeCapacityError) as e:
        render(make_manifest(), RenderOptions(MANIFEST_DIGEST, node_gpu_memory_mib=4096))
    msg = str(e.value)
    assert "'cnn'" in msg and "6144 MiB" in msg and "4096 MiB" in msg
    assert "\n" not in msg


def test_refuses_a_service_whose_models_together_overflow_one_gpu() -> None:
    models = [model("a", "shared", gpu_memory_mib=3000), model("b", "shared", gpu_memory_mib=3000)]
    m = make_manifest(models=models,
                      services=[Service("both", "shared", ["a", "b"], gpu="required")])
    with pytest.raises(NodeCapacityError, match=r"'both'.*a, b.*6000 MiB.*4096 MiB"):
        render(m, RenderOptions(MANIFEST_DIGEST, node_gpu_memory_mib=4096))
    assert render(m, RenderOptions(MANIFEST_DIGEST, node_gpu_memory_mib=6000))


def test_gpu_memory_of_cpu_services_is_not_held_against_the_nodes() -> None:
    m = make_manifest(services=[Service("mlp", "mlp", ["mlp"], gpu="none"),
                                Service("cnn", "cnn", ["cnn"], port=8001, gpu="none")])
    assert render(m, RenderOptions(MANIFEST_DIGEST, node_gpu_memory_mib=1024))


def test_service_names_that_collide_in_kubernetes_are_refused() -> None:
    m = make_manifest(services=[Service("a_b", "mlp", ["mlp"]),
                                Service("a.b", "cnn", ["cnn"], port=8001)])
    with pytest.raises(ManifestError, match=r"'a_b' and 'a\.b' both become.*'demo-a-b'"):
        render(m, RenderOptions(MANIFEST_DIGEST))


def test_bad_manifest_digest_or_replicas_are_refused() -> None:
    with pytest.raises(ManifestError, match="not sha256"):
        render(make_manifest(), RenderOptions("sha256:nothex"))
    with pytest.raises(PlacementError, match="replicas"):
        render(make_manifest(), RenderOptions(MANIFEST_DIGEST, replicas=0))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomization_builds_with_kubectl_into_valid_namespaced_objects(tmp_path: Path) -> None:
    files = render(make_manifest(), RenderOptions(MANIFEST_DIGEST, namespace="inference"))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    built = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True,
                           text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    objs = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs) == sorted(docs(files))
    for obj in objs:
        assert obj["metadata"]["namespace"] == "inference"
        assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) == K8S_VERSION
