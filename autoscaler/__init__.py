"""gpufleet's autoscaler sidecar: observe replicas, decide per pool, act through a runtime."""
