"""Keel: a consensus-backed control plane for a multi-cluster workload platform."""

__version__ = "0.1.0"
