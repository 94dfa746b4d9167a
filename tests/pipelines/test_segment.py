"""The segment job and the per-image pieces evaluate shares: networks, multi-scale outputs, sampling, colours."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import s3fs
import torch
from PIL import Image
from torch import nn

from demo.synth import write_corpus
from formats.model_file import save_model
from model.baselines import RawPixels
from model.clip_teacher import TeacherConfig
from model.inference import Head, InferenceOptions, grid_samples, multiscale_outputs, predict
from model.network import ModelOutput, NetworkConfig, build_network
from pipelines.inference.classfree import classfree_head
from pipelines.inference.pictures import colorize, overlay_image, palette
from pipelines.inference.predict import LocalMapper, ModelSpec, gather_samples
from pipelines.segment import SegmentConfig, list_images, main, run

TEACHER = dataclasses.asdict(TeacherConfig(model="tiny-rn"))  # random weights: tests only


def tiny_net():
    return build_network(NetworkConfig(backbone="small", output_stride=8, embedding_dim=16, clip_dim=64,
                                       projection_hidden=32)).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("model") / "model.pt")
    unknown = torch.nn.functional.normalize(torch.randn(2, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    save_model(path, tiny_net(), TEACHER, {"names": ["striped", "dotted"], "known": torch.zeros(2, 64),
                                           "unknown": unknown})
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(str(root), num_train=0, num_val=3, size=64)
    return root / "val" / "images"


def test_voc_palette_class_colours_and_overlay():
    assert palette()[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette()[255].tolist() == [224, 224, 192]
    assert colorize(np.array([[0, 1, 255]])).tolist() == [[[128, 0, 0], [0, 128, 0], [0, 0, 0]]]
    image = np.full((1, 2, 3), 100, np.uint8)
    blended = overlay_image(image, np.array([[2, 255]]))
    assert blended.tolist() == [[[114, 114, 50], [100, 100, 100]]]  # (100 + 128) / 2, 100 / 2; ignored: untouched


def test_raw_pixels_keep_black_grey_and_white_apart():
    images = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)  # black, grey, white
    out = RawPixels()(images)
    expected = [[-0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]
    assert torch.allclose(out.embeddings[0, :, 0].T, torch.tensor(expected))
    assert out.clip.shape == (1, 0, 1, 3)


class Constant(nn.Module):
    """Output depends on nothing but the grid size: every scale agrees once resampled."""

    output_stride = 4

    def forward(self, images):
        b, _, h, w = images.shape
        e = torch.nn.functional.normalize(torch.arange(1.0, 4.0), dim=0).view(1, 3, 1, 1).expand(b, 3, h // 4, w // 4)
        return ModelOutput(e, 2 * e)


def test_multiscale_outputs_average_on_the_scale_one_grid_and_predict_crops_the_padding():
    images = torch.rand(1, 3, 30, 37)
    out = multiscale_outputs(Constant(), images, InferenceOptions(window=16, scales=(1.0, 1.5, 0.5)))
    assert out.embeddings.shape == (1, 3, 8, 10)  # ceil(30 / 4), ceil(37 / 4)
    assert torch.allclose(out.clip, 2 * out.embeddings) and torch.allclose(out.embeddings.norm(dim=1), torch.ones(1))
    head = Head("net", "clusters", {"centres": torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])})
    labels = predict({"net": Constant()}, {"k": head}, np.zeros((30, 37, 3), np.uint8), InferenceOptions())
    assert labels["k"].shape == (30, 37) and (labels["k"] == 0).all()  # (1, 2, 3) is nearer e2 than e0


def test_gathered_samples_do_not_depend_on_the_order_the_actors_finish_in():
    rng = np.random.default_rng(0)
    rows = [{"part": "train", "index": i, "readable": True, "emb/student": rng.normal(size=(5, 3)).astype(np.float32),
             "lab/student": rng.integers(0, 4, 5)} for i in range(6)]
    in_order = gather_samples(rows, 12, seed=0)["train"]["student"]
    shuffled = gather_samples([rows[i] for i in (3, 0, 5, 1, 4, 2)], 12, seed=0)["train"]["student"]
    assert all(torch.equal(a, b) for a, b in zip(in_order, shuffled))


def test_grid_samples_take_the_label_at_each_cell_centre():
    mask = np.arange(36, dtype=np.uint8).reshape(6, 6)  # padded to 8 x 8 with 255
    grid = torch.arange(4.0).view(1, 1, 2, 2)  # embedding = cell number
    emb, lab = grid_samples(ModelOutput(grid, grid), mask, 4, 4, np.random.default_rng(0))
    assert sorted(zip(emb[:, 0].tolist(), lab.tolist())) == [(0.0, 14), (1.0, 255), (2.0, 255), (3.0, 255)]
    emb, lab = grid_samples(ModelOutput(grid, grid), mask, 4, 9, np.random.default_rng(0))
    assert emb.shape == (9, 1) and set(lab.tolist()) <= {14, 255}  # more draws than cells: with replacement


def test_list_images_from_a_folder_a_glob_and_a_file(images):
    names = ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert [u.rsplit("/", 1)[-1] for u in list_images(str(images))] == names
    assert [u.rsplit("/", 2)[-2] for u in list_images(str(images.parent))] == ["images"] * 3 + ["masks"] * 3
    assert [u.rsplit("/", 1)[-1] for u in list_images(str(images / "00000[12].jpg"))] == names[1:]
    assert len(list_images(str(images / "000000.jpg"))) == 1


def test_classfree_labels_reach_the_unknown_prototypes(checkpoint, images, tmp_path):
    cfg = SegmentConfig(checkpoint=checkpoint, images=str(images), output=str(tmp_path), classfree=True)
    assert run(cfg, LocalMapper(ModelSpec(checkpoint))) == ["000000", "000001", "000002"]
    labels = np.asarray(Image.open(tmp_path / "000000_labels.png"))
    assert labels.shape == (64, 64) and labels.max() < 4  # two names, two unknown prototypes
    assert main(["--checkpoint", checkpoint, "--images", str(images), "--output", str(tmp_path)]) == 2  # no mode
    assert main(["--checkpoint", checkpoint, "--images", str(images), "--output", str(tmp_path),
                 "--vocabulary", "sky,cat"]) == 2  # a vocabulary names class-free output only
    assert main(["--checkpoint", checkpoint, "--images", str(images), "--output", str(tmp_path), "--classfree",
                 "--classfree-decision", "argmax"]) == 2
    levels = tmp_path / "levels"
    run(SegmentConfig(checkpoint=checkpoint, images=str(images), output=str(levels), classfree=True,
                      classfree_decision="levels"), LocalMapper(ModelSpec(checkpoint)))
    # the default flat argmax splits the known mass among the names: never more pixels known than level by
    # level (the names' scores only rise, the centres' stay), and here fewer (the setting reaches the head)
    level_labels = np.asarray(Image.open(levels / "000000_labels.png"))
    assert (labels < 2).sum() < (level_labels < 2).sum()


def test_a_vocabulary_names_the_unknown_classes_and_test_names_decide_what_is_known(checkpoint):
    loaded = ModelSpec(checkpoint).load()
    protos = loaded.meta["prototypes"]
    head = classfree_head(loaded.teacher, protos, ["striped", "dotted"], ["sky", "cat", "grass"])
    assert head.names[:2] == ["striped", "dotted"] and len(head.names) == 2 + len(head.candidates)
    assert all(len(c) == 3 and set(c) == {"sky", "cat", "grass"} for c in head.candidates)
    assert head.names[2] == f"unknown-0 ({head.candidates[0][0]})"
    # the centres are flagged against the names given now, by the rule the prototypes record
    named = {**protos, "centres": protos["unknown"], "explained": torch.zeros(2, dtype=torch.bool),
             "explain": {"rule": "cosine", "threshold": 0.5}}
    as_names = classfree_head(loaded.teacher, named, ["striped", "dotted"])
    assert as_names.candidates == [[], []] and as_names.names[2:] == ["unknown-0", "unknown-1"]


def test_unreadable_images_are_skipped_and_listed_the_rest_written_upright(checkpoint, images, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in images.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    whole = (images / "000001.jpg").read_bytes()
    (folder / "000001.jpg").write_bytes(whole[: len(whole) // 3])  # truncated
    (folder / "empty.png").write_bytes(b"")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated a quarter turn: the 64x40 file is 40 wide, 64 high on screen
    Image.new("RGB", (64, 40), (200, 30, 30)).save(folder / "turned.jpg", exif=exif)
    for mode in (["--unsupervised", "3"], ["--prompts", "cat,grass,sky"]):
        out = tmp_path / mode[0].strip("-")
        cfg = SegmentConfig(checkpoint=checkpoint, images=str(folder), output=str(out),
                            **{mode[0].strip("-"): int(mode[1]) if mode[1].isdigit() else tuple(mode[1].split(","))})
        assert run(cfg, LocalMapper(ModelSpec(checkpoint))) == ["000000", "000002", "turned"]
        printed = capsys.readouterr()
        assert "skipped 000001:" in printed.out and "skipped empty:" in printed.out
        assert "segment: 100%" in printed.err and "5/5" in printed.err  # a bar over every image, bad ones too
        unreadable = json.loads((out / "unreadable.json").read_text())
        assert sorted(unreadable) == ["000001", "empty"] and all(unreadable.values())
        assert not (out / "000001_labels.png").exists()
        assert np.asarray(Image.open(out / "turned_labels.png")).shape == (64, 40)
        classes = json.loads((out / "labels.json").read_text())["classes"]
        assert len(classes) == 3 and classes["0"] in ("cluster-0", "cat")


@pytest.mark.slow
def test_prompts_on_a_folder_and_clusters_on_s3_through_ray(ray_local, checkpoint, images, tmp_path, s3_bucket):
    out = tmp_path / "out"
    assert main(["--checkpoint", checkpoint, "--images", str(images), "--output", str(out),
                 "--prompts", "cat,grass,sky", "--num-workers", "1"]) == 0
    for name in ("000000", "000001", "000002"):
        labels = np.asarray(Image.open(out / f"{name}_labels.png"))
        assert labels.shape == (64, 64) and labels.max() < 3
        overlay = Image.open(out / f"{name}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size[0] > 64  # the image and a legend beside it

    fs = s3fs.S3FileSystem()
    for path in images.iterdir():
        fs.pipe(f"{s3_bucket[5:]}/in/{path.name}", path.read_bytes())
    assert main(["--checkpoint", checkpoint, "--images", f"{s3_bucket}/in", "--output", f"{s3_bucket}/out",
                 "--unsupervised", "3", "--num-workers", "1"]) == 0
    fs.invalidate_cache()
    written = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_bucket[5:]}/out"))
    names = ("000000", "000001", "000002")
    assert written == sorted([f"{n}_{kind}.png" for n in names for kind in ("labels", "overlay")] + ["labels.json"])
    labels = np.asarray(Image.open(io.BytesIO(fs.cat(f"{s3_bucket[5:]}/out/000001_labels.png"))))
    assert labels.shape == (64, 64) and set(np.unique(labels)) <= {0, 1, 2}
