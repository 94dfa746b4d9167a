"""The embed job on real shards: sidecars aligned by key, features equal to the teacher's, prototypes,
int8 storage, bad samples, reruns, S3, a checkpoint through --clip-pretrained, and resume after a kill."""

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import cv2
import numpy as np
import pytest
import torch

from common import progress
from common.config import ConfigError
from demo.synth import CLASSES, write_corpus
from formats.prototypes import load_prototypes
from formats.shards import read_samples, read_stats
from formats.sidecar import decode_sample, shard_parts, to_canvas
from formats.teacher_weights import load_teacher
from model.clip_teacher import TeacherConfig, dense_and_global
from pipelines import embed, shard
from tests.pipelines.test_shard import settled_count


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local):
    """12 synthetic images in 3 image shards of 4."""
    root = tmp_path_factory.mktemp("embed")
    write_corpus(str(root / "corpus"), num_train=12, num_val=0, size=128)
    out = str(root / "shards")
    shard.run(shard.ShardConfig(input=str(root / "corpus" / "train"), output=out, samples_per_shard=4, image_size=128))
    (root / "classes.txt").write_text("\n".join(CLASSES[1:]) + "\n")
    return root, out


def embed_cfg(shards_url, output, **kw):
    return embed.EmbedConfig(**{"input": shards_url, "output": output, "clip_model": "tiny-rn", "chunk_size": 3,
                                "batch_size": 2, "num_unknown": 4, **kw})


def sidecar_samples(output, shard_name):
    return [s for part in shard_parts(read_stats(output, shard_name)) for s in read_samples(output, part)]


def teacher_reference(teacher, image_bytes):
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    canvas = torch.from_numpy(to_canvas(rgb, teacher.image_size)).permute(2, 0, 1)[None].float() / 255
    mean, std = torch.tensor(teacher.mean).view(1, 3, 1, 1), torch.tensor(teacher.std).view(1, 3, 1, 1)
    return dense_and_global(teacher, (canvas - mean) / std)


def test_sidecars_are_key_aligned_and_hold_the_teachers_features(shards, capsys):
    root, shards_url = shards
    out = str(root / "clip")
    result = embed.run(embed_cfg(shards_url, out, classes=str(root / "classes.txt")))
    assert result["complete"] and result["num_samples"] == 12 and result["failures"] == {}
    printed = capsys.readouterr().out
    assert "KB per image" in printed and "RANDOM weights" in printed
    teacher = load_teacher(TeacherConfig("tiny-rn"))
    for name in ("00000", "00001", "00002"):
        images = read_samples(shards_url, name)
        sidecars = sidecar_samples(out, name)
        assert [s["__key__"] for s in sidecars] == [s["__key__"] for s in images]  # across 2 parts of 3 + 1
        for image, side in zip(images, sidecars):
            decoded = decode_sample(side)
            assert decoded.dense.shape == (64, 4, 4) and decoded.global_embedding.shape == (64,)
            assert decoded.superpixels.shape == (128, 128) and decoded.superpixels.min() == 0
            dense, pooled = teacher_reference(teacher, image["jpg"])
            assert np.allclose(decoded.dense, dense[0].numpy(), atol=2e-3 * dense.abs().max().item())
            assert np.allclose(decoded.global_embedding, pooled[0].numpy(), atol=2e-3 * pooled.abs().max().item())
    protos = load_prototypes(out)
    assert protos["names"] == list(CLASSES[1:]) and protos["known"].shape == (5, 64)
    assert 0 < len(protos["centres"]) <= 4 and protos["centres"].shape[1] == 64
    assert protos["explained"].dtype == torch.bool and len(protos["explained"]) == len(protos["centres"])
    assert torch.equal(protos["unknown"], protos["centres"][~protos["explained"]])
    assert protos["explain"] == {"rule": "margin", "threshold": 0.5}
    manifest = json.loads((root / "clip" / "embed_manifest.json").read_text())
    assert manifest["grid"] == 4 and manifest["random_init"] and manifest["pretrained"] == ""

    # a rerun embeds nothing and rewrites nothing
    before = {p: os.path.getmtime(root / "clip" / p) for p in os.listdir(root / "clip")}
    again = embed.run(embed_cfg(shards_url, out, classes=str(root / "classes.txt")))
    assert again["complete"] and again["images_per_s"] == 0
    assert {p: os.path.getmtime(root / "clip" / p) for p in os.listdir(root / "clip")} == before
    with pytest.raises(ConfigError, match="storage"):
        embed.run(embed_cfg(shards_url, out, storage="int8", classes=str(root / "classes.txt")))
    with pytest.raises(ConfigError, match="classes"):  # prototypes of other names need another output
        embed.run(embed_cfg(shards_url, out))
    with pytest.raises(ConfigError, match=re.escape("explain: {'rule': 'margin', 'threshold': 0.5} there, "
                                                    "{'rule': 'margin', 'threshold': 0.4} now")):  # nor another rule
        embed.run(embed_cfg(shards_url, out, explain_threshold=0.4, classes=str(root / "classes.txt")))


def test_progress_moves_per_batch_not_per_part(shards, monkeypatch, caplog):
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    caplog.set_level(logging.DEBUG, logger="common.progress")
    root, shards_url = shards
    embed.run(embed_cfg(shards_url, str(root / "clip_progress"), num_unknown=0))
    reported = re.search(r"images: (\d+) items reported by workers in (\d+) reports", caplog.text)
    # 3 shards of 4 in chunks of 3 are 6 parts, 9 batches of at most 2: the bar hears of every batch
    assert reported and (int(reported[1]), int(reported[2])) == (12, 9), caplog.text


def test_int8_storage_is_smaller_and_close(shards):
    root, shards_url = shards
    full, small = str(root / "clip16"), str(root / "clip8")
    embed.run(embed_cfg(shards_url, full, num_unknown=0))
    embed.run(embed_cfg(shards_url, small, storage="int8", num_unknown=0))
    a = [decode_sample(s).dense for s in sidecar_samples(full, "00000")]
    b = [decode_sample(s).dense for s in sidecar_samples(small, "00000")]
    cos = [torch.nn.functional.cosine_similarity(torch.from_numpy(x), torch.from_numpy(y), dim=0).min().item()
           for x, y in zip(a, b)]
    assert min(cos) > 0.999
    # the tiny model's 4x4 grid is lost in tar padding, so compare the feature payloads themselves
    payload = lambda out: sum(len(s["dense.npy"]) + len(s.get("scale.npy", b"")) for s in sidecar_samples(out, "00000"))
    assert payload(small) < 0.75 * payload(full)


def test_superpixels_only_sidecars_for_an_online_teacher(shards):
    """storage none: the sidecars keep the superpixels alone, and the prototypes come from the teacher run
    on the same canvases, so they equal those found from stored features (up to float16 rounding)."""
    root, shards_url = shards
    classes = str(root / "classes.txt")
    stored, bare = str(root / "clip-stored"), str(root / "clip-bare")
    embed.run(embed_cfg(shards_url, stored, classes=classes, chunk_size=4))  # one part per shard: same order
    assert embed.run(embed_cfg(shards_url, bare, classes=classes, chunk_size=4, storage="none"))["complete"]
    for name in ("00000", "00001", "00002"):
        full, only = sidecar_samples(stored, name), sidecar_samples(bare, name)
        assert [s["__key__"] for s in only] == [s["__key__"] for s in full]
        assert all(set(s) - {"__key__", "__url__"} == {"sp.png"} for s in only)
        for a, b in zip(full, only):
            decoded = decode_sample(b)
            assert decoded.dense is None and decoded.global_embedding is None
            assert np.array_equal(decoded.superpixels, decode_sample(a).superpixels)
    assert json.loads((root / "clip-bare" / "embed_manifest.json").read_text())["storage"] == "none"
    with_features, without = load_prototypes(stored), load_prototypes(bare)
    assert torch.equal(with_features["known"], without["known"])
    assert with_features["centres"].shape == without["centres"].shape and len(without["centres"]) > 0
    assert torch.allclose(with_features["centres"], without["centres"], atol=2e-2)
    assert torch.equal(with_features["explained"], without["explained"])


def test_bad_samples_are_recorded_and_skipped(shards, tmp_path):
    root, shards_url = shards
    bad = tmp_path / "bad_shards"
    bad.mkdir()
    good = read_samples(shards_url, "00000")
    with tarfile.open(bad / "00000.tar", "w") as tar:
        for i, files in enumerate([good[0], {"jpg": b"not a jpeg"}, {"json": b"{}"}, good[1]]):
            for ext, data in files.items():
                if ext.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (bad / "manifest.json").write_text(json.dumps({"shards": [{"name": "00000.tar", "num_samples": 4}]}))
    result = embed.run(embed_cfg(str(bad), str(tmp_path / "clip"), num_unknown=0))
    assert result["complete"] and result["num_samples"] == 2
    assert result["failures"] == {"not_an_image": 1, "no_image": 1}
    assert [s["__key__"] for s in sidecar_samples(str(tmp_path / "clip"), "00000")] == ["k0", "k3"]


def test_s3_in_and_out_and_a_checkpoint_through_pretrained(shards, s3_bucket, tmp_path):
    import s3fs

    root, shards_url = shards
    fs = s3fs.S3FileSystem()
    fs.put(shards_url + "/", f"{s3_bucket}/shards/", recursive=True)
    model = load_teacher(TeacherConfig("tiny-rn")).model
    torch.manual_seed(1)
    for p in model.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    out = f"{s3_bucket}/clip"
    result = embed.run(embed_cfg(f"{s3_bucket}/shards", out, clip_pretrained=str(tmp_path / "clip.pt"), num_unknown=0))
    assert result["complete"] and result["num_samples"] == 12
    manifest = json.loads(fs.cat_file(f"{s3_bucket}/clip/embed_manifest.json"))
    assert not manifest["random_init"] and manifest["pretrained"].endswith("clip.pt")
    teacher = load_teacher(TeacherConfig("tiny-rn", str(tmp_path / "clip.pt")))
    image = read_samples(shards_url, "00001")[0]
    side = decode_sample(sidecar_samples(out, "00001")[0])
    dense, _ = teacher_reference(teacher, image["jpg"])
    assert np.allclose(side.dense, dense[0].numpy(), atol=2e-3 * dense.abs().max().item())


@pytest.mark.slow
def test_killed_job_resumes_and_every_key_is_embedded_once(shards, tmp_path):
    root, shards_url = shards
    out = tmp_path / "clip"
    cmd = [sys.executable, "pipelines/embed.py", "--input", shards_url, "--output", str(out), "--chunk-size", "1",
           "--batch-size", "1", "--num-unknown", "0", "--num-cpus", "2", "--threads-per-actor", "1"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("*-*_stats.json")):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    parts_before = settled_count(out, "*-*_stats.json")
    assert 1 <= parts_before < 12, "the kill should land mid-run"
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    for name in ("00000", "00001", "00002"):
        keys = [s["__key__"] for s in sidecar_samples(str(out), name)]
        assert keys == [s["__key__"] for s in read_samples(shards_url, name)]
