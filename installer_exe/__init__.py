"""Builds the self-contained `appliance-installer` executable for a stick (no host Python)."""
