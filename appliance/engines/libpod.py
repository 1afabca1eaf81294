"""Create and start a container through Podman's libpod API, for what its compat API drops.

Podman's Docker-compatible `POST /containers/create` ignores device requests, and
reads `HostConfig.Devices` as host paths, so a CDI device cannot reach a container
that way. libpod's own create takes CDI names in `devices`. The spec is the same
keyword set the docker engine gives `containers.run`; a key this module does not
know is refused rather than dropped, so a container never starts with less than
it was asked for.
"""

from __future__ import annotations

from typing import Any

from appliance.engines.gpus import CDI_DEVICES
from appliance.errors import EngineError

LIBPOD_API = "/v4.0.0/libpod"  # the oldest libpod API with CDI devices in `devices`


def specgen(spec: dict[str, Any]) -> dict[str, Any]:
    """libpod's SpecGenerator for a docker SDK `containers.run` spec (pure).

    Raises:
        EngineError: the spec holds a key with no libpod translation here.
    """
    known = {"image", "name", "command", "labels", "network_mode", "restart_policy",
             "healthcheck", "environment", CDI_DEVICES}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise EngineError(f"cannot create a GPU container through podman's libpod API: no "
                          f"translation for {', '.join(unknown)}; add it to "
                          "appliance/engines/libpod.py")
    out: dict[str, Any] = {
        "image": spec["image"],
        "name": spec["name"],
        "command": list(spec.get("command") or []),
        "labels": dict(spec.get("labels") or {}),
        "env": {k: str(v) for k, v in (spec.get("environment") or {}).items()},
        "devices": [{"path": d} for d in spec.get(CDI_DEVICES) or []],
    }
    if spec.get("network_mode"):
        out["netns"] = {"nsmode": spec["network_mode"]}
    if spec.get("restart_policy"):
        out["restart_policy"] = spec["restart_policy"]["Name"]
    hc = spec.get("healthcheck")
    if hc:
        out["healthconfig"] = {"Test": list(hc["test"]), "Interval": hc["interval"],
                               "Timeout": hc["timeout"], "Retries": hc["retries"],
                               "StartPeriod": hc["start_period"]}
    return out


def run(client: Any, spec: dict[str, Any]) -> str:
    """Create and start the container of `spec` through libpod; return its id.

    Raises:
        EngineError: podman refused to create or start it (a missing CDI device
            is named with what to run).
    """
    import requests
    api = client.api
    url = f"{api.base_url}{LIBPOD_API}/containers"
    body = specgen(spec)
    try:
        r = api.post(f"{url}/create", json=body, timeout=120)
        if r.status_code != 201:
            raise EngineError(f"podman cannot create container {spec['name']}: "
                              f"{_why(r)}{_hint(r)}")
        cid = str(r.json()["Id"])
        r = api.post(f"{url}/{cid}/start", timeout=120)
    except requests.RequestException as e:
        raise EngineError(f"podman's libpod API does not answer: {e}") from e
    if r.status_code not in (204, 304):
        raise EngineError(f"podman cannot start container {spec['name']}: {_why(r)}{_hint(r)}")
    return cid


def _why(r: Any) -> str:
    try:
        text = str(r.json().get("message") or r.text)
    except ValueError:
        text = r.text
    return " ".join(text.split())[:300]


def _hint(r: Any) -> str:
    if "unresolvable CDI devices" in r.text or "CDI" in r.text:
        return ("; the CDI spec lacks this GPU: run nvidia-ctk cdi generate "
                "--output=/etc/cdi/nvidia.yaml --device-name-strategy=uuid")
    return ""
