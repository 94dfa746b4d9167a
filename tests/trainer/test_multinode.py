"""A multi-node run, simulated with ray.cluster_utils.Cluster: the two workers land on different nodes
and train together."""

import json
import os

import pytest
import ray
from ray.cluster_utils import Cluster

from demo.synth import write_corpus
from pipelines import embed, shard
from tests.trainer.test_train import config, metrics
from trainer import train


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    root = tmp_path_factory.mktemp("nodes")
    write_corpus(str(root / "corpus"), num_train=32, num_val=0, size=128)
    shard.run(shard.ShardConfig(input=str(root / "corpus" / "train"), output=str(root / "shards"),
                                samples_per_shard=8, image_size=128))
    embed.run(embed.EmbedConfig(input=str(root / "shards"), output=str(root / "clip"), clip_model="tiny-rn", num_unknown=2))
    yield root
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_workers_on_two_nodes_train_together(two_nodes):
    cfg = config(two_nodes, "nodes", max_steps=6, **{"scaling.placement_strategy": "STRICT_SPREAD",
                                                     "run.record_keys": True, "data.num_loader_workers": 0})
    assert train.run(cfg).error is None
    nodes = {json.loads(line)["node"] for rank in (0, 1)
             for line in open(two_nodes / "logs" / "nodes" / f"keys-rank{rank}.jsonl")}
    assert len(nodes) == 2
    assert len(metrics(two_nodes, "nodes")) == 6
    assert os.path.exists(two_nodes / "runs" / "nodes" / "model.pt")
