"""Starting or joining Ray the same way in every job: `RAY_ADDRESS` or an existing cluster wins."""

from __future__ import annotations

import atexit
import importlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import ray

from common import logs

log = logging.getLogger(__name__)


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in `RAY_ADDRESS` (as under `ray job submit`) or start a local one."""
    if ray.is_initialized():
        return
    # Ray's usage statistics go to a remote server; opt in explicitly if you want them sent.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    joining = bool(os.environ.get("RAY_ADDRESS"))
    logs.quiet_ray()
    with ThreadPoolExecutor(1) as pool:
        # ray.init mostly waits on the processes it spawns: Ray Data's imports (0.3 s) run meanwhile
        data_imported = pool.submit(importlib.import_module, "ray.data")
        if joining:
            ray.init(log_to_driver=True)
        else:
            # A local run should not pay for the dashboard, and must not grab more cores than asked.
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
        data_imported.result()
    logs.quiet_ray()  # and Ray Data's handler
    if not joining:
        # atexit runs the last registered first, so this goes before Ray's own exit hook, which
        # sleeps half a second for late log lines: every result is in hand by then.
        atexit.unregister(shutdown_ray)
        atexit.register(shutdown_ray)
    # Jobs draw their own progress in units a person cares about (images, shards); Ray Data's
    # per-operator bars cost about a second and a half at start on two cores.
    ray.data.DataContext.get_current().enable_progress_bars = False
    log.info("ray: %s CPUs, %s GPUs", ray.cluster_resources().get("CPU", 0), ray.cluster_resources().get("GPU", 0))


def shutdown_ray() -> None:
    """`ray.shutdown()`, from our own exit hook for a local Ray.

    A local shutdown takes about 1.2 s here, 0.8 s of it Ray stopping the GCS before the autoscaler
    monitor, whose exit handler then waits on the dead GCS until Ray kills it. Only Ray's private
    node handle can stop the monitor first, so we pay the wait rather than depend on Ray's internals.
    """
    ray.shutdown()


def gpus_per_actor(setting: float) -> float:
    """A model actor's GPU request with -1 ("auto") decided: a job on a cluster (RAY_ADDRESS set, as under
    `ray job submit`) asks for one even when none is up yet, since an autoscaler adds GPU nodes on demand;
    a local run uses the GPUs this machine has. Any other value is the user's."""
    if setting != -1:
        return setting
    return 1.0 if os.environ.get("RAY_ADDRESS") or ray.cluster_resources().get("GPU", 0) else 0.0
