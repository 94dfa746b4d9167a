"""Fixtures shared by every test: a real S3 endpoint on loopback and a Ray cluster per module.

The S3 endpoint is moto's server mode on 127.0.0.1; its address and dummy credentials go into the
environment before Ray starts, so Ray workers (separate processes) reach it too.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

# Ray reports usage to a remote server by default; tests never send traffic beyond loopback.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """`http://127.0.0.1:PORT` of a moto S3 server; AWS_* variables point every client at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket: `s3://NAME`."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.mkdir(name)
    fs.invalidate_cache()
    return f"s3://{name}"


@pytest.fixture(scope="module")
def ray_local(s3_endpoint):
    """A local two-CPU Ray for the module; started after the S3 variables are set."""
    import ray

    from common.ray_utils import shutdown_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    shutdown_ray()


def pytest_collection_modifyitems(config, items):
    """Tests that join a separately started Ray cluster run first, whatever the selection and its order.

    A process that earlier ran (and shut down) a local Ray cannot then drive tasks on a cluster started
    with `ray start`: the tasks' arguments, owned by the driver, come back as OwnerDiedError or the tasks
    hang (Ray 2.5x; a bare local `ray.init` and Ray Data map, `ray.shutdown`, `ray start --head`,
    `ray.init(address=...)` and the same map reproduce it with none of this project's code). The reverse
    order works."""
    items.sort(key=lambda item: item.get_closest_marker("joins_cluster") is None)  # stable: the rest keep their order
