"""The front door's HAProxy on the process engine, from the bundle's verified proxy image.

The proxy image's layers (verified into the content store at install) are unpacked
into a root of their own beside the runtimes' (`appliance.engines.rootfs`), and
HAProxy runs there confined as the runtime is (`appliance.engines.confine` under our
supervisor, `imageview.unit_confinement` under systemd): the image's root read-only,
the front door's configuration directory bound read-only and its run directory (the
runtime API socket) read-write at the paths the proxy container has them
(`container.CONF_IN_CONTAINER`, `RUN_IN_CONTAINER`), as the image's unprivileged user,
with no capability and no-new-privileges. So the host needs no haproxy package.
"""

from __future__ import annotations

from pathlib import Path

from appliance.bundle.manifest import Image, Manifest
from appliance.bundle.store import ContentStore
from appliance.engines import rootfs
from appliance.engines.imageview import (
    ImageView,
    image_config,
    image_env,
    image_user,
    resolve_in_root,
)
from appliance.errors import ApplianceError, ImageLoadError, ProxyConfigError, ProxyMissingError
from appliance.frontdoor import site as files_of
from appliance.frontdoor.container import (
    CONF_IN_CONTAINER,
    PRIVILEGED_PORTS,
    PROXY_UID,
    RUN_IN_CONTAINER,
    ProxyContainer,
)
from appliance.site.layout import Site

HAPROXY_NAME = "haproxy"  # the image's command when its config names none


def proxy_root_key(manifest: Manifest) -> str | None:
    """The root key of `manifest`'s proxy image, or None when it carries none."""
    img = manifest.frontdoor_image()
    return None if img is None else rootfs.root_key(rootfs.runtime_layers(manifest, img.name))


def ensure_proxy_root(site: Site, manifest: Manifest, store: ContentStore) -> Path:
    """The unpacked root of `manifest`'s proxy image (unpacked now if missing).

    Raises:
        ProxyMissingError: the bundle carries no proxy image, or its blobs are not stored.
        ImageLoadError: a layer does not match its digest or holds an unsafe member.
    """
    img = manifest.frontdoor_image()
    if img is None:
        raise ProxyMissingError("the front door needs the bundle's proxy image and this "
                                "release carries none; install a bundle built with "
                                "frontdoor_image (make proxy-image)")
    layers = rootfs.runtime_layers(manifest, img.name)
    missing = [d for d in (img.config_digest, *layers) if not store.has(d)]
    if missing:
        raise ProxyMissingError(f"proxy image {img.reference}: blob {missing[0][:19]} is not in "
                                "the content store; install the bundle that carries it again")
    try:
        return rootfs.ensure_root(store, layers, rootfs.roots_dir(site.root),
                                  (str(CONF_IN_CONTAINER), str(RUN_IN_CONTAINER)))
    except ApplianceError as e:
        raise ImageLoadError(f"proxy image {img.reference}: {e}") from e


def installed_proxy(site: Site, config_digest: str) -> tuple[Manifest, Image]:
    """The installed release's manifest whose proxy image has `config_digest` (what
    `ProxyContainer.image` names), newest release first.

    Raises:
        ProxyMissingError: no installed release carries that proxy image.
    """
    for rel in sorted(site.releases(), key=lambda r: r.sequence, reverse=True):
        try:
            m = rel.manifest()
        except (ApplianceError, OSError):
            continue
        img = m.frontdoor_image()
        if img is not None and img.config_digest == config_digest:
            return m, img
    raise ProxyMissingError(f"no installed release carries the proxy image "
                            f"{config_digest[:19]}; install the bundle again")


def refuse_low_ports(ports: tuple[int, ...]) -> None:
    """Refuse a port under 1024: HAProxy runs unprivileged, with no capability to bind it.

    Raises:
        ProxyConfigError: one of `ports` is under 1024.
    """
    low = sorted(p for p in ports if p < PRIVILEGED_PORTS)
    if low:
        raise ProxyConfigError(
            f"port {low[0]} is under 1024 and the front door's HAProxy runs unprivileged "
            "on the process engine: declare a port of 1024 or more (or run the docker "
            "engine, whose proxy network may open it)")


def proxy_view(site: Site, spec: ProxyContainer, *args: str) -> ImageView:
    """What HAProxy sees: the proxy image's root (unpacked now if missing), the front
    door's directories at their container paths, its user and `haproxy ARGS`.

    Raises:
        ProxyMissingError: no installed release carries the proxy image.
        ImageLoadError: its root cannot be unpacked.
    """
    manifest, img = installed_proxy(site, spec.image)
    root = ensure_proxy_root(site, manifest, site.store)
    cfg = image_config(site.store, img.config_digest)
    env = image_env(cfg)
    image_cmd = [str(a) for a in (cfg.get("Entrypoint") or []) + (cfg.get("Cmd") or [])]
    binary = resolve_in_root(root, image_cmd[0] if image_cmd else HAPROXY_NAME,
                             env.get("PATH", ""))
    # never root: an image that names no user still runs as the proxy's
    uid, gid = image_user(cfg, root) or (PROXY_UID, PROXY_UID)
    # The configuration takes the models' read-only place in the view, the runtime
    # API's directory the data's read-write one.
    return ImageView(root, spec.conf_dir, str(CONF_IN_CONTAINER), spec.run_dir,
                     str(RUN_IN_CONTAINER), uid, gid, str(cfg.get("WorkingDir") or "/"),
                     [binary, *args], env, gpu=False, nofile=spec.nofile)


def serve_args() -> list[str]:
    """HAProxy's arguments: the front door's configuration at its container path, in the
    foreground, with no master process (the image's `-W`): our supervisor or systemd is
    the one that restarts it, and the pid it records is HAProxy's own."""
    return ["-db", "-f", str(CONF_IN_CONTAINER / files_of.CONFIG)]


def check_image_ref(manifest: Manifest) -> str:
    """A one-line description of the HAProxy that would run, for preflight.

    Raises:
        ProxyMissingError: the bundle carries no proxy image (or one with no layers).
        ProxyConfigError: a service's port is under 1024.
    """
    img = manifest.frontdoor_image()
    if img is None or not rootfs.runtime_layers(manifest, img.name):
        raise ProxyMissingError("the front door on the process engine runs HAProxy from the "
                                "bundle's proxy image and this bundle carries none; ask the "
                                "vendor for a bundle built with frontdoor_image")
    refuse_low_ports(tuple(s.port for s in manifest.services))
    return (f"HAProxy from the bundle's proxy image {img.reference}, confined as uid "
            f"{PROXY_UID} (the host needs no haproxy package)")
