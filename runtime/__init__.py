"""The appliance runtime: an Open Inference Protocol (KServe V2) server for baked-in models."""

__version__ = "0.1.0"
