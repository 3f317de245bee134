"""Isolation of a job: cgroup v2 directories (cgroupfs), later containers and namespaces."""
