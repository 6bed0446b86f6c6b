"""Runtimes run replicas; the controller is the same whichever runs them."""

from autoscaler.runtime.base import Replica, ReplicaSpec, Role, Runtime

__all__ = ["Replica", "ReplicaSpec", "Role", "Runtime"]
