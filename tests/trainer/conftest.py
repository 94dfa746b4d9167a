"""A small prepared corpus for the trainer tests: image shards plus their CLIP sidecars."""

import pytest

from demo.synth import CLASSES, write_corpus
from pipelines import embed, shard


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ray_local):
    """48 synthetic images in 6 shards of 8, embedded by the tiny random ResNet CLIP."""
    root = tmp_path_factory.mktemp("train")
    write_corpus(str(root / "corpus"), num_train=48, num_val=0, size=128)
    shard.run(shard.ShardConfig(input=str(root / "corpus" / "train"), output=str(root / "shards"),
                                samples_per_shard=8, image_size=128))
    (root / "classes.txt").write_text("\n".join(CLASSES[1:]) + "\n")
    embed.run(embed.EmbedConfig(input=str(root / "shards"), output=str(root / "clip"), clip_model="tiny-rn",
                                classes=str(root / "classes.txt"), num_unknown=4))
    return root
