"""The config the trainer hands its workers: resolved into a new object, the user's values kept or refused."""

import os

import pytest

from common.config import ConfigError, build_config
from trainer.config import TrainConfig
from trainer.train import resolve

EMBEDDED = {"embed_dim": 64, "image_size": 128}


def user_config(**network):
    return build_config(TrainConfig, {"data": {"shards": "data/shards", "clip": "s3://b/clip"},
                                      "network": {"backbone": "small", "output_stride": 8, **network},
                                      "run": {"storage_path": "runs", "log_dir": "logs"}})


def test_resolve_returns_a_new_config_and_leaves_the_callers_alone():
    cfg = user_config()
    resolved = resolve(cfg, EMBEDDED)
    assert resolved.network.clip_dim == 64 and cfg.network.clip_dim == 0
    assert resolved.data.shards == os.path.abspath("data/shards") and cfg.data.shards == "data/shards"
    assert resolved.data.clip == "s3://b/clip"  # URLs are left as they are
    assert resolved.run.storage_path == os.path.abspath("runs") and resolved.run.log_dir == os.path.abspath("logs")


def test_a_users_clip_dim_is_kept_when_it_matches_and_refused_when_it_does_not():
    assert resolve(user_config(clip_dim=64), EMBEDDED).network.clip_dim == 64
    with pytest.raises(ConfigError, match="network.clip_dim=512, but the CLIP features .* are 64-d"):
        resolve(user_config(clip_dim=512), EMBEDDED)
