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
             "healthcheck", "environment", CDI_DEVICES, *_CONFINEMENT}
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
    out.update(_confinement(spec))
    hc = spec.get("healthcheck")
    if hc:
        out["healthconfig"] = {"Test": list(hc["test"]), "Interval": hc["interval"],
                               "Timeout": hc["timeout"], "Retries": hc["retries"],
                               "StartPeriod": hc["start_period"]}
    return out


# The keys `appliance.engines.hardening.hardened` adds (CIS section 5), as libpod names them.
_CONFINEMENT = ("read_only", "tmpfs", "cap_drop", "security_opt", "pids_limit", "mem_limit",
                "memswap_limit", "nano_cpus", "ulimits", "log_config", "volumes")
_CPU_PERIOD = 100_000  # microseconds


def _confinement(spec: dict[str, Any]) -> dict[str, Any]:
    """libpod's fields for the confinement keys of a `containers.run` spec.

    Raises:
        EngineError: a security option other than no-new-privileges, or a bind volume.
    """
    out: dict[str, Any] = {}
    if spec.get("read_only"):
        out["read_only_filesystem"] = True
    mounts = [{"destination": dest, "type": "tmpfs", "source": "tmpfs",
               "options": [o for o in opts.split(",") if o]}
              for dest, opts in (spec.get("tmpfs") or {}).items()]
    if mounts:
        out["mounts"] = mounts
    if spec.get("cap_drop"):
        out["cap_drop"] = list(spec["cap_drop"])
    for opt in spec.get("security_opt") or []:
        if opt != "no-new-privileges":
            raise EngineError(f"cannot pass the security option {opt!r} to podman's libpod "
                              "API; add it to appliance/engines/libpod.py")
        out["no_new_privileges"] = True
    limits: dict[str, Any] = {}
    if spec.get("pids_limit"):
        limits["pids"] = {"limit": int(spec["pids_limit"])}
    if spec.get("mem_limit"):
        limits["memory"] = {"limit": int(spec["mem_limit"]),
                            "swap": int(spec.get("memswap_limit") or spec["mem_limit"])}
    if spec.get("nano_cpus"):
        limits["cpu"] = {"quota": int(spec["nano_cpus"]) * _CPU_PERIOD // 1_000_000_000,
                         "period": _CPU_PERIOD}
    if limits:
        out["resource_limits"] = limits
    if spec.get("ulimits"):
        out["r_limits"] = [{"type": u["Name"], "soft": u["Soft"], "hard": u["Hard"]}
                           for u in spec["ulimits"]]
    log = spec.get("log_config")
    if log:
        size = str((log.get("Config") or {}).get("max-size", ""))
        out["log_configuration"] = {"driver": "k8s-file",
                                    **({"size": _bytes(size)} if size else {})}
    named = []
    for name, bind in (spec.get("volumes") or {}).items():
        if name.startswith("/"):
            raise EngineError(f"cannot pass the bind mount {name} to podman's libpod API; "
                              "add it to appliance/engines/libpod.py")
        named.append({"Name": name, "Dest": bind["bind"], "Options": [bind.get("mode", "rw")]})
    if named:
        out["volumes"] = named
    return out


def _bytes(size: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    unit = size[-1:].lower()
    return int(size[:-1]) * units[unit] if unit in units else int(size)


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
