"""The shared core and the site side of the offline appliance."""

__version__ = "0.1.0"
