"""The front door's proxy as a container (`appliance.site.door.ProxyHost`), for the docker
engine: one container a site, labelled with the site it serves, hardened by
`appliance.frontdoor.container.create_kwargs`."""

from __future__ import annotations

from typing import Any

from appliance.errors import EngineError
from appliance.frontdoor.container import ProxyContainer, create_kwargs

LABEL_FRONTDOOR = "io.appliance.frontdoor"  # the proxy: the site it serves


def short_error(e: BaseException) -> str:
    """An engine's error on one line, at most 300 characters."""
    return " ".join(str(e).split())[:300]


class ProxyContainerMixin:
    """The proxy methods of an engine with a docker SDK `client` and a site `tag`."""

    client: Any
    tag: str

    proxy_in_container = True  # the files are mounted at container.CONF_IN_CONTAINER
    proxy_uid: int | None = None  # the container starts as the image's unprivileged user

    def proxy_name(self) -> str:
        """The proxy container's name on this site."""
        return f"appliance-{self.tag}-frontdoor"

    def proxy_logs(self) -> str:
        """The command that shows the proxy container's log."""
        name = self.proxy_name()
        return f"docker logs {name} (or podman logs {name})"

    def ensure_proxy(self, spec: ProxyContainer, restart: bool = False) -> bool:
        """Run the proxy container from `spec`: left alone when it already runs that image
        (its restart policy brings it back), else (re)created. True when (re)started.

        Raises:
            EngineError: the engine refused to create or start it.
        """
        import docker.errors
        try:
            old = self.client.containers.get(spec.name)
        except docker.errors.NotFound:
            old = None
        except docker.errors.DockerException as e:
            raise EngineError(f"cannot inspect the front door {spec.name}: {short_error(e)}") from e
        try:
            if old is not None:
                if not restart and old.status == "running" and old.image.id == spec.image:
                    return False
                old.remove(force=True)
            kwargs = create_kwargs(spec)
            kwargs["labels"] = {**kwargs["labels"], LABEL_FRONTDOOR: self.tag}
            c = self.client.containers.create(**kwargs)
            c.start()
        except docker.errors.DockerException as e:
            raise EngineError(f"cannot start the front door {spec.name}: {short_error(e)}") from e
        return True

    def stop_proxy(self) -> None:
        """Remove this site's proxy container (the site itself is being removed).

        Raises:
            EngineError: the engine refused.
        """
        import docker.errors
        for c in self.client.containers.list(
                all=True, filters={"label": f"{LABEL_FRONTDOOR}={self.tag}"}):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException as e:
                raise EngineError(f"cannot remove the front door {c.name}: {short_error(e)}") from e
