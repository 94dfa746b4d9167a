"""`ray job submit --working-dir . -- python pipelines/shard.py ...` against a local head node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from demo.synth import write_corpus
from formats.manifest import read_manifest
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    """A real Ray head with its dashboard (job server) on loopback; the whole group is killed after."""
    port, dashboard = free_port(), free_port()
    # token authentication, as a real cluster should run: the head and the CLI share one token
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_ADDRESS": "",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--temp-dir={tmp_path_factory.mktemp('ray')}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # answering at all (401 without a token) means it is up
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError("the Ray head node did not start")
            time.sleep(1)
    yield address, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_shard_job_through_ray_job_submit(head_node, tmp_path):
    address, env = head_node
    write_corpus(str(tmp_path), num_train=12, num_val=0, size=64)
    out = tmp_path / "shards"
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
         "python", "pipelines/shard.py", "--input", str(tmp_path / "train"), "--output", str(out),
         "--samples-per-shard", "5"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    assert "samples in dataset: 12 in 3 shards" in result.stdout
    assert read_manifest(str(out))["num_samples"] == 12
