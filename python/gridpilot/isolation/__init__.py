"""Isolation of a job: the slot's and the job's cgroups (slot, sandbox, jobcgroup, cgroupfs, cgroupv1), containers and
namespaces (containers, runtimes, images, container_properties, nesting, nspid), GPUs (gpus)."""

#: The environment variable naming, ":"-separated, the descriptors through which a JobWrapper in a Podman container
#: joins its job's cgroups (each an open cgroup.procs, passed after the two pipes): set by containers.launch_spec,
#: read by the wrapper. Here, not in the runtimes package, so that the wrapper can read it without importing them.
JOIN_CGROUP_FDS_ENV = "GRIDPILOT_JOIN_CGROUP_FDS"
