"""Kubernetes objects for a verified release: per service a Deployment, Service and PDB.

`render` is a pure function of a `Manifest` and `RenderOptions`: no IO, no clock,
the same inputs give the same text. The caller verifies the bundle first; the
manifest digest it passes in is the digest of the signed manifest bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from appliance.bundle.imageref import pinned_reference
from appliance.bundle.manifest import DIGEST_RE, Manifest, Service
from appliance.errors import ManifestError, NodeCapacityError, PlacementError
from appliance.k8s.names import dns_label, label_value

MIB = 1024 * 1024
GPU_RESOURCE = "nvidia.com/gpu"
LIVE_PATH = "/v2/health/live"
LABEL_PREFIX = "appliance"
POD_LISTEN = "0.0.0.0"  # noqa: S104 - inside the pod's own network namespace
KUSTOMIZATION = "kustomization.yaml"
# Names, not secrets: the Secret in the namespace whose key `token` holds one token a
# line, and the directory each pod sees it in, read-only.
TOKEN_SECRET = "appliance-token"  # noqa: S105
TOKEN_KEY = "token"  # noqa: S105
TOKEN_DIR = "/run/appliance-token"  # noqa: S105


@dataclass(frozen=True)
class RenderOptions:
    """What the site says about its cluster; everything else comes from the signed manifest."""

    manifest_digest: str  # sha256:... of the signed manifest bytes
    node_gpu_memory_mib: int | None = None  # memory of one GPU on a node; None: not checked
    replicas: int = 1
    namespace: str | None = None
    cpu_only: bool = False  # serve `preferred` services without GPUs
    runtime_class: str | None = None  # e.g. "nvidia" where it is not containerd's default
    container_port: int = 8000  # the runtime image listens here (`--port 8000`)
    memory_overhead_mib: int = 512  # the runtime process before any model is loaded
    startup_seconds: int = 600  # how long a pod may take to load its models
    # The Secret whose `token` key the runtime requires (mounted as a file, re-read when
    # the Secret changes: rotation is a second line, then the old one removed); None when
    # the Ingress checks the token instead.
    token_secret: str | None = TOKEN_SECRET


def wants_gpu(service: Service, options: RenderOptions) -> bool:
    """Whether the service's pods request an `nvidia.com/gpu`.

    Raises:
        PlacementError: a service requires a GPU and the render is CPU-only.
    """
    if service.gpu == "required":
        if options.cpu_only:
            raise PlacementError(
                f"service {service.name!r} requires a GPU but the render is --cpu-only; "
                "drop --cpu-only and run it on a cluster with NVIDIA GPU nodes"
            )
        return True
    return service.gpu == "preferred" and not options.cpu_only


def check_fit(manifest: Manifest, options: RenderOptions) -> None:
    """Refuse a release whose GPU services need more memory than one node GPU declares.

    Raises:
        NodeCapacityError: naming the model (or service), its need and the capacity.
    """
    cap = options.node_gpu_memory_mib
    if cap is None:
        return
    for service in manifest.services:
        if not wants_gpu(service, options):
            continue
        models = [manifest.model(name) for name in service.models]
        for model in models:
            if model.gpu_memory_mib > cap:
                raise NodeCapacityError(
                    f"model {model.name!r} (service {service.name!r}) declares "
                    f"{model.gpu_memory_mib} MiB of GPU memory but a node GPU has {cap} MiB "
                    "(--node-gpu-memory-mib); add larger GPU nodes or render with --cpu-only"
                )
        total = sum(m.gpu_memory_mib for m in models)
        if total > cap:
            raise NodeCapacityError(
                f"service {service.name!r} shares one GPU among models "
                f"{', '.join(m.name for m in models)} declaring {total} MiB of GPU memory "
                f"but a node GPU has {cap} MiB (--node-gpu-memory-mib); split the service"
            )


def render(manifest: Manifest, options: RenderOptions) -> dict[str, str]:
    """File name -> YAML text: the objects for every service and a kustomization.yaml.

    Raises:
        NodeCapacityError: a model needs more GPU memory than a node GPU declares.
        PlacementError: a GPU-only service in a CPU-only render.
        ManifestError: the manifest cannot be named in Kubernetes (bad digest or names).
    """
    if not DIGEST_RE.match(options.manifest_digest):
        raise ManifestError(f"manifest digest {options.manifest_digest!r} is not sha256:<hex>")
    if options.node_gpu_memory_mib is not None and options.node_gpu_memory_mib < 1:
        raise PlacementError(
            f"node GPU memory must be a positive number of MiB, got {options.node_gpu_memory_mib}"
        )
    if options.replicas < 1:
        raise PlacementError(f"replicas must be at least 1, got {options.replicas}")
    check_fit(manifest, options)
    files: dict[str, str] = {}
    seen: dict[str, str] = {}
    for service in manifest.services:
        name = dns_label(manifest.name, service.name)
        if name in seen:
            raise ManifestError(
                f"services {seen[name]!r} and {service.name!r} both become Kubernetes name "
                f"{name!r}; rename one in appliance.yaml"
            )
        seen[name] = service.name
        for kind, obj in (
            ("deployment", _deployment(manifest, service, name, options)),
            ("service", _service(manifest, service, name, options)),
            ("pdb", _pdb(manifest, service, name, options)),
        ):
            files[f"{name}-{kind}.yaml"] = _dump(manifest, options, obj)
    files[KUSTOMIZATION] = _dump(manifest, options, _kustomization(sorted(files), options))
    return files


# -- objects ------------------------------------------------------------------
def _selector(manifest: Manifest, name: str) -> dict[str, str]:
    # A Deployment's selector cannot change, so it holds only what stays the same
    # from release to release; sequence and digest ride on the other labels.
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": dns_label(manifest.name),
    }


def _labels(manifest: Manifest, name: str, options: RenderOptions) -> dict[str, str]:
    hexdigest = options.manifest_digest.removeprefix("sha256:")
    labels = _selector(manifest, name)
    labels.update({
        "app.kubernetes.io/part-of": label_value(manifest.name),
        "app.kubernetes.io/version": label_value(manifest.version),
        "app.kubernetes.io/managed-by": "appliance",
        f"{LABEL_PREFIX}/sequence": str(manifest.sequence),
        # Label values stop at 63 characters; the full digest is the annotation.
        f"{LABEL_PREFIX}/manifest": "sha256-" + hexdigest[:32],
    })
    return labels


def _annotations(manifest: Manifest, service: Service, options: RenderOptions) -> dict[str, str]:
    models = [manifest.model(m) for m in service.models]
    return {
        f"{LABEL_PREFIX}/manifest-digest": options.manifest_digest,
        f"{LABEL_PREFIX}/release": f"{manifest.name} {manifest.version} "
                                   f"(sequence {manifest.sequence})",
        f"{LABEL_PREFIX}/models": ",".join(f"{m.name}:{m.version}" for m in models),
        f"{LABEL_PREFIX}/gpu-memory-mib": str(sum(m.gpu_memory_mib for m in models)),
    }


def _meta(manifest: Manifest, service: Service, name: str,
          options: RenderOptions) -> dict[str, Any]:
    return {
        "name": name,
        "labels": _labels(manifest, name, options),
        "annotations": _annotations(manifest, service, options),
    }


def _resources(manifest: Manifest, service: Service, gpu: bool,
               options: RenderOptions) -> dict[str, Any]:
    # A model's weights are held in host memory at least once while they load
    # (twice for ONNX Runtime building its session), on CPU and GPU alike.
    weights_mib = sum(-(-manifest.model(m).weights_size // MIB) for m in service.models)
    memory = options.memory_overhead_mib + 2 * weights_mib
    requests: dict[str, str] = {"cpu": "1", "memory": f"{memory}Mi"}
    limits: dict[str, str] = {"memory": f"{2 * memory}Mi"}
    if gpu:
        # Extended resources are whole devices and need a limit; the request follows it.
        limits[GPU_RESOURCE] = "1"
    return {"requests": requests, "limits": limits}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _deployment(manifest: Manifest, service: Service, name: str,
                options: RenderOptions) -> dict[str, Any]:
    image = manifest.image(service.image)
    gpu = wants_gpu(service, options)
    container: dict[str, Any] = {
        "name": "runtime",
        # Pinned by digest and never pulled: the node has it from the verified archive.
        "image": pinned_reference(image.reference, image.manifest_digest),
        "imagePullPolicy": "Never",
        "ports": [{"name": "http", "containerPort": options.container_port,
                   "protocol": "TCP"}],
        # The kubelet probes the pod IP; the runtime alone would listen on 127.0.0.1.
        # Takes effect only where the image's command does not pass --host itself.
        "env": [{"name": "RUNTIME_HOST", "value": POD_LISTEN},
                # gpu: required on the CPU keeps the pod not ready, its probe saying why
                {"name": "RUNTIME_GPU_POLICY", "value": service.gpu if gpu else "none"}],
        "startupProbe": _probe(LIVE_PATH, 5, max(1, options.startup_seconds // 5)),
        "readinessProbe": _probe(service.health, 5, 3),
        "livenessProbe": _probe(LIVE_PATH, 10, 3),
        "resources": _resources(manifest, service, gpu, options),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    if options.token_secret is not None:
        # A file, never an environment variable (those show in `kubectl describe`); the
        # pod does not start until the Secret exists, so no pod serves without a token.
        container["env"].append({"name": "RUNTIME_TOKEN_FILE",
                                 "value": f"{TOKEN_DIR}/{TOKEN_KEY}"})
        container["volumeMounts"] = [{"name": "token", "mountPath": TOKEN_DIR,
                                      "readOnly": True}]
        pod["volumes"] = [{"name": "token", "secret": {
            "secretName": options.token_secret,
            "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}],
            "defaultMode": 0o444}}]  # the image's unprivileged user reads it
    if gpu:
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists",
                               "effect": "NoSchedule"}]
        if options.runtime_class:
            pod["runtimeClassName"] = options.runtime_class
    meta = _meta(manifest, service, name, options)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": options.replicas,
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": options.startup_seconds + 60,
            # A new pod must be ready before an old one goes: the old release keeps serving.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "selector": {"matchLabels": _selector(manifest, name)},
            "template": {
                "metadata": {"labels": dict(meta["labels"]),
                             "annotations": dict(meta["annotations"])},
                "spec": pod,
            },
        },
    }


def _service(manifest: Manifest, service: Service, name: str,
             options: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(manifest, service, name, options),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(manifest, name),
            "ports": [{"name": "http", "port": service.port, "targetPort": "http",
                       "protocol": "TCP"}],
        },
    }


def _pdb(manifest: Manifest, service: Service, name: str,
         options: RenderOptions) -> dict[str, Any]:
    # maxUnavailable (not minAvailable) so a one-replica service can still be drained.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(manifest, service, name, options),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": _selector(manifest, name)},
        },
    }


def _kustomization(resources: list[str], options: RenderOptions) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
    }
    if options.namespace:
        doc["namespace"] = options.namespace
    doc["resources"] = resources
    return doc


def _dump(manifest: Manifest, options: RenderOptions, obj: dict[str, Any]) -> str:
    header = (
        f"# Rendered by `appliance k8s render` from {manifest.name} {manifest.version} "
        f"(sequence {manifest.sequence}, manifest {options.manifest_digest}).\n"
        "# Render again from the signed bundle rather than editing; patch with kustomize.\n"
    )
    return header + yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)
