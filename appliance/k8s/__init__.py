"""Kubernetes for a site that outgrew one server: manifests and the k3s image archive."""

from appliance.k8s.render import RenderOptions, check_fit, render

__all__ = ["RenderOptions", "check_fit", "render"]
