"""The online teacher in the step: the embed job's dense features computed on each view, in fp32 exactly
and in bf16 closely, and the batch takes them in place of stored ones."""

import pytest
import torch

from model.clip_teacher import TeacherConfig, auto_precision, dense_features, load_teacher
from trainer.step import OnlineTeacher, with_teacher_features


@pytest.mark.parametrize("model", ["tiny-rn", "tiny-vit"])
def test_online_features_are_the_teachers_on_each_view(model):
    views = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    full = OnlineTeacher(load_teacher(TeacherConfig(model)), "maskclip", "fp32")
    reference = dense_features(full.teacher, full.teacher.normalise(views))
    assert torch.equal(full(views), reference)
    low = OnlineTeacher(load_teacher(TeacherConfig(model, precision="bf16")), "maskclip", "bf16")
    features = low(views)
    assert features.dtype == torch.float32 and features.shape == reference.shape
    assert not torch.equal(features, reference)  # bf16 arithmetic did run
    cosine = torch.nn.functional.cosine_similarity(features, reference, dim=1)
    assert cosine.min() > 0.98, cosine.min()


def test_the_batch_takes_the_teachers_features_in_place_of_its_crops():
    teacher = OnlineTeacher(load_teacher(TeacherConfig("tiny-vit")), "maskclip", "fp32")
    crops = torch.rand(2, 3, 32, 32)
    batch = with_teacher_features({"images": crops, "teacher_images": crops}, teacher)
    assert "teacher_images" not in batch and batch["clip"].shape == (2, 64, 4, 4)
    stored = {"images": crops, "clip": torch.zeros(2, 64, 4, 4)}
    assert with_teacher_features(stored, None) is stored
    with pytest.raises(RuntimeError, match="teacher.mode"):
        with_teacher_features({"images": crops, "teacher_images": crops}, None)


def test_auto_precision_is_decided_where_the_teacher_runs():
    assert auto_precision("auto", torch.device("cpu")) == "fp32"
    assert auto_precision("auto", torch.device("cuda", 0)) == "fp16"
    assert auto_precision("bf16", "cpu") == "bf16"


def test_teacher_settings_are_checked_at_the_edge():
    from common.config import ConfigError, build_config
    from trainer.config import TrainConfig

    for bad in ({"mode": "live"}, {"precision": "int8"}):
        with pytest.raises(ConfigError, match="teacher"):
            build_config(TrainConfig, {"data": {"shards": "s", "clip": "c"}, "teacher": bad})
