"""The Kubernetes operator: pure functions from a spec to manifests and status, and thin kopf handlers."""
