"""The data jobs on an autoscaling cluster, as infra/ ships them: a head with 0 CPUs and worker node types
that start at 0 nodes (ray.cluster_utils.AutoscalingCluster, fake nodes on this machine, one with a fake
GPU). The jobs must not size themselves from the cluster at start: the shard job scales out to several
nodes, and the embed job's model actors ask for GPUs that the autoscaler then adds.

This module starts its own Ray (AutoscalingCluster stops any other on the machine first)."""

import json

import pytest
import ray
from ray.cluster_utils import AutoscalingCluster

from demo.synth import write_corpus
from pipelines import embed, shard

NODE_TYPES = {
    "cpu_worker": {"resources": {"CPU": 1, "object_store_memory": 150 * 2**20}, "node_config": {},
                   "min_workers": 0, "max_workers": 3},
    "gpu_worker": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 150 * 2**20}, "node_config": {},
                   "min_workers": 0, "max_workers": 1},
}


@pytest.fixture(scope="module")
def cluster():
    cluster = AutoscalingCluster(head_resources={"CPU": 0, "object_store_memory": 150 * 2**20},
                                 worker_node_types=NODE_TYPES, idle_timeout_minutes=10)
    cluster.start()
    try:
        ray.init("auto")
        assert ray.cluster_resources().get("CPU", 0) == 0  # nothing but the 0-CPU head at start
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def worker_nodes(kind: str) -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get(kind, 0) > 0)


@pytest.mark.slow
def test_shard_then_embed_scale_out_from_a_0_cpu_head(cluster, tmp_path, monkeypatch, capsys):
    write_corpus(str(tmp_path / "corpus"), num_train=24, num_val=0, size=64)
    manifest = shard.run(shard.ShardConfig(input=str(tmp_path / "corpus" / "train"), output=str(tmp_path / "shards"),
                                           samples_per_shard=4, image_size=64))
    assert manifest["complete"] and manifest["num_samples"] == 24 and manifest["num_shards"] == 6
    assert worker_nodes("CPU") >= 2, ray.nodes()  # six shard tasks, one CPU a node: more than one node came up

    # under `ray job submit` RAY_ADDRESS is set: the actors ask for a GPU although none is up yet
    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    assert worker_nodes("GPU") == 0
    result = embed.run(embed.EmbedConfig(input=str(tmp_path / "shards"), output=str(tmp_path / "clip"),
                                         clip_model="tiny-rn", num_unknown=2, chunk_size=4, max_model_actors=1))
    assert result["complete"] and result["num_samples"] == 24
    assert worker_nodes("GPU") == 1  # the autoscaler added the GPU node for the model actor
    # the actor holds the GPU; the fake one has no CUDA behind it, which the actor itself found, choosing fp32
    assert "6 parts by cpu (fp32) with 1 GPU assigned" in capsys.readouterr().out
    assert json.loads((tmp_path / "clip" / "embed_manifest.json").read_text())["storage"] == "float16"
