"""The data jobs on an autoscaling cluster, as infra/ ships them: a head with 0 CPUs and worker node types
that start at 0 nodes (Ray's fake multi-node provider, as ray.cluster_utils.AutoscalingCluster uses it:
fake nodes on this machine, one type with a fake GPU). The jobs must not size themselves from the
cluster at start (which here has no CPU at all): the shard job's tasks get nodes added for them, and the
embed job's model actors ask for GPUs that the autoscaler then adds, beside CPU nodes for its decode
tasks. (How far Ray Data then grows a job, its own autoscaler decides from rates over ~10 s windows;
these jobs are shorter than that.)

This module starts its own Ray and stops every other on the machine first, as AutoscalingCluster does; its
tests run before any test that starts a local Ray in the same process (tests/conftest.py says why)."""

import json
import os
import subprocess
import sys
import tempfile

import pytest
import ray

from demo.synth import write_corpus
from pipelines import embed, shard

pytestmark = pytest.mark.joins_cluster

NODE_TYPES = {
    "cpu_worker": {"resources": {"CPU": 1, "object_store_memory": 150 * 2**20}, "node_config": {},
                   "min_workers": 0, "max_workers": 3},
    "gpu_worker": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 150 * 2**20}, "node_config": {},
                   "min_workers": 0, "max_workers": 1},
}
# What ray.cluster_utils.AutoscalingCluster builds on (its fake_multi_node/example.yaml, which the ray
# 2.60 wheel does not ship, so that class cannot start here): the same fake provider, set up with
# Ray's public CLI as that class does, and the head's own node type with no CPU.
CONFIG = {
    "cluster_name": "fake_multinode", "max_workers": 4, "head_node_type": "ray.head.default",
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "available_node_types": {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                             **NODE_TYPES},
    "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 10, "docker": {}, "initialization_commands": [],
    "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
}


def ray_cli(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], check=True, env=env, capture_output=True,
                   timeout=120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    config = tmp_path_factory.mktemp("autoscaler") / "cluster.json"
    config.write_text(json.dumps(CONFIG))
    port = 6379  # the fake provider starts its nodes against Ray's default port, as AutoscalingCluster's head uses
    ray_cli("stop", "--force")  # as AutoscalingCluster does: the fake provider's nodes are this machine's
    # Ray reads its authentication mode once, at import, and this test process imported Ray long before:
    # the loopback-only test cluster runs without token authentication (tests/pipelines/
    # test_job_submit.py covers a cluster with it)
    env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1", "RAY_ADDRESS": "",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    try:
        ray_cli("start", "--head", f"--port={port}", f"--autoscaling-config={config}", "--num-cpus=0",
                f"--object-store-memory={150 * 2**20}", f"--temp-dir={tempfile.gettempdir()}/ray", env=env)
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        assert ray.cluster_resources().get("CPU", 0) == 0  # nothing but the 0-CPU head at start
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()
        ray_cli("stop", "--force")


def worker_nodes(kind: str) -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get(kind, 0) > 0)


@pytest.mark.slow
def test_shard_then_embed_scale_out_from_a_0_cpu_head(cluster, tmp_path, monkeypatch, capsys):
    write_corpus(str(tmp_path / "corpus"), num_train=24, num_val=0, size=64)
    manifest = shard.run(shard.ShardConfig(input=str(tmp_path / "corpus" / "train"), output=str(tmp_path / "shards"),
                                           samples_per_shard=4, image_size=64))
    assert manifest["complete"] and manifest["num_samples"] == 24 and manifest["num_shards"] == 6
    assert worker_nodes("CPU") >= 1  # the head has none: a node was added for the shard tasks

    # under `ray job submit` RAY_ADDRESS is set: the actors ask for a GPU although none is up yet
    monkeypatch.setenv("RAY_ADDRESS", cluster)
    assert worker_nodes("GPU") == 0
    result = embed.run(embed.EmbedConfig(input=str(tmp_path / "shards"), output=str(tmp_path / "clip"),
                                         clip_model="tiny-rn", num_unknown=2, chunk_size=4, max_model_actors=1))
    assert result["complete"] and result["num_samples"] == 24
    assert worker_nodes("GPU") == 1  # the autoscaler added the GPU node for the model actor...
    assert worker_nodes("CPU") >= 2  # ...beside a CPU node for the decode tasks: the job spans nodes
    # the actor holds the GPU; the fake one has no CUDA behind it, which the actor itself found, choosing fp32
    assert "6 parts by cpu (fp32) with 1 GPU assigned" in capsys.readouterr().out
    assert json.loads((tmp_path / "clip" / "embed_manifest.json").read_text())["storage"] == "float16"


@pytest.mark.slow
def test_segment_model_actors_ask_for_gpus_the_autoscaler_adds(cluster, tmp_path, monkeypatch):
    # evaluate and segment share this pool (pipelines.inference.predict.RayMapper): grown from one actor
    # as the cluster does, each asking for --gpus-per-actor (auto: 1 under `ray job submit`)
    from ray.util.state import list_actors

    from pipelines import segment

    write_corpus(str(tmp_path / "corpus"), num_train=0, num_val=3, size=64)
    monkeypatch.setenv("RAY_ADDRESS", cluster)
    written = segment.run(segment.SegmentConfig(checkpoint="teacher", clip_model="tiny-rn",
                                                images=str(tmp_path / "corpus" / "val" / "images"),
                                                output=str(tmp_path / "out"), prompts=("striped", "dotted")))
    assert len(written) == 3 and all((tmp_path / "out" / f"{stem}_labels.png").exists() for stem in written)
    gpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0}
    actors = list_actors(detail=True, limit=1000)
    models = [a for a in actors if "PredictActor" in (a.get("repr_name") or "")]  # not the embed job's
    assert models, [(a["class_name"], a.get("repr_name")) for a in actors]
    assert all(a["required_resources"].get("GPU") == 1 for a in models)
    assert {a["node_id"] for a in models} <= gpu_nodes  # they ran where the autoscaler put a GPU
