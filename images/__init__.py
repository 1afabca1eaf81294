"""Builds the runtime container image offline: a debootstrap base, staged wheels, podman."""
