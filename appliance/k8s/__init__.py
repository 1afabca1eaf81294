"""Kubernetes for a site that outgrew one server: rendered manifests and the k3s archive's name.

The archive itself is `appliance.bundle.imagearchive.write_image_archive(..., digest_names=True)`.
"""

from appliance.k8s.names import archive_name
from appliance.k8s.render import RenderOptions, check_fit, render

__all__ = ["RenderOptions", "archive_name", "check_fit", "render"]
