"""Utilities every layer may use: files, YAML, option checks, run folders, devices, plotting.

Nothing here imports another efyolo package but ``efyolo.errors`` (and :mod:`efyolo.ops`).
"""
