"""Kubernetes for a site that outgrew one server: manifests and the k3s image archive."""

from appliance.k8s.archive import archive_name, write_k3s_archive
from appliance.k8s.render import RenderOptions, check_fit, render

__all__ = ["RenderOptions", "archive_name", "check_fit", "render", "write_k3s_archive"]
