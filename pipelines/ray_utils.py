"""Starting or joining Ray the same way in every job: `RAY_ADDRESS` or an existing cluster wins."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in `RAY_ADDRESS` (as under `ray job submit`) or start a local one."""
    if ray.is_initialized():
        return
    # Ray's usage statistics go to a remote server; opt in explicitly if you want them sent.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        # A local run should not pay for the dashboard, and must not grab more cores than asked.
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    # Jobs draw their own progress in units a person cares about (images, shards); Ray Data's
    # per-operator bars cost about a second and a half at start on two cores.
    ray.data.DataContext.get_current().enable_progress_bars = False
    log.info("ray: %s CPUs, %s GPUs", ray.cluster_resources().get("CPU", 0), ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 1))
