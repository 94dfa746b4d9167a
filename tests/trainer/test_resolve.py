"""The config the trainer hands its workers: resolved into a new object, the user's values kept or refused."""

import os

import pytest

from common.config import ConfigError, build_config
from trainer.config import TrainConfig
from trainer.train import portable_weights, resolve

EMBEDDED = {"embed_dim": 64, "image_size": 128, "storage": "float16"}


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


def test_superpixel_only_sidecars_need_the_online_teacher():
    bare = {**EMBEDDED, "storage": "none"}
    with pytest.raises(ConfigError, match="teacher.mode=online"):
        resolve(user_config(), bare)
    online = build_config(TrainConfig, {"data": {"shards": "s", "clip": "c"}, "teacher": {"mode": "online"}})
    assert resolve(online, bare).teacher.mode == "online"


def test_the_teachers_weights_are_named_so_workers_and_the_model_file_find_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher.pt").write_bytes(b"")
    assert portable_weights("teacher.pt") == str(tmp_path / "teacher.pt")  # a local file: made absolute
    for as_given in ("openai", "s3://b/teacher.pt", ""):  # a tag, a URL, random weights
        assert portable_weights(as_given) == as_given
