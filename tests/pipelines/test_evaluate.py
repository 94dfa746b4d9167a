"""The evaluation job: perfect predictions score 100 on every task, and a real tiny model runs end to end on Ray."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from common.config import ConfigError
from demo.synth import write_corpus
from formats.datasets import open_dataset
from formats.model_file import save_model
from model.clip_teacher import TeacherConfig, text_prototypes
from model.inference import InferenceOptions
from model.network import ModelOutput, NetworkConfig, build_network
from pipelines import evaluate
from pipelines.evaluate import EvalConfig, main, run
from pipelines.evaluation.report import image_miou, json_safe, markdown_table, per_class_tables
from pipelines.evaluation.tasks import classfree_scores
from pipelines.inference.predict import Draw, LocalMapper, ModelSpec, SampleWork, baselines_key, gather_samples

TEACHER = dataclasses.asdict(TeacherConfig(model="tiny-rn"))  # random weights: tests only
NAMES = ["sky", "grass", "cat", "road"]
COLOURS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
PERMUTATION = torch.tensor([2, 0, 3, 1])  # class c is embedded as cluster PERMUTATION[c]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    net = build_network(NetworkConfig(backbone="small", output_stride=8, embedding_dim=16, clip_dim=64,
                                      projection_hidden=32))
    path = str(tmp_path_factory.mktemp("model") / "model.pt")
    save_model(path, net, TEACHER)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(str(root), num_train=0, num_val=4, size=64)
    return root / "val"


def flat_colour_dataset(root: Path) -> Path:
    """Generic layout, lossless PNGs: each class is one flat colour, so the class is readable off a pixel."""
    for d in ("images", "masks"):
        (root / d).mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    rng = np.random.default_rng(0)
    for i in range(3):
        mask = np.zeros((24, 36), np.uint8)
        mask[8:, :] = 1
        mask[10:20, 5 + 8 * i: 17 + 8 * i] = 2
        mask[20:, 20:] = 3
        image = (COLOURS.numpy()[mask] * 255).round().astype(np.uint8)
        mask[rng.random(mask.shape) < 0.05] = 255  # ignored pixels count nowhere
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    return root


class Oracle(nn.Module):
    """A perfect student at stride 1: reads the class off the colour; CLIP output = that class's text
    prototype, embedding = one-hot of the permuted class (clusters that need matching)."""

    output_stride = 1

    def __init__(self, prototypes: torch.Tensor):
        super().__init__()
        self.prototypes = prototypes

    def forward(self, images: torch.Tensor) -> ModelOutput:
        cls = torch.cdist(images.permute(0, 2, 3, 1), COLOURS).argmin(-1)  # [B, H, W]
        clip = self.prototypes[cls].permute(0, 3, 1, 2)
        return ModelOutput(F.one_hot(PERMUTATION[cls], len(NAMES)).permute(0, 3, 1, 2).float(), clip)


def test_a_perfect_student_scores_100_on_every_task(checkpoint, tmp_path, capsys):
    data = flat_colour_dataset(tmp_path / "flat")
    spec = ModelSpec(checkpoint)
    prototypes = text_prototypes(spec.load().teacher, NAMES)  # the seeded teacher the job itself loads
    probe = flat_colour_dataset(tmp_path / "probe")  # the same scenes, a folder of its own
    cfg = EvalConfig(checkpoint=checkpoint, dataset="generic", data_root=str(data), output=str(tmp_path / "out"),
                     baselines=False, unseen=("cat",), num_panels=1, probe_epochs=40, probe_lr=0.1,
                     probe_root=str(probe), knn_k=3)  # 3 images: at most 3 training segments of a class
    report = run(cfg, LocalMapper(spec, {"student": Oracle(prototypes)}))
    tasks = report["tasks"]
    # the bars count images: fitting reads the evaluated and the probe folder, scoring the evaluated one
    num_images = report["num_images"]
    bars = capsys.readouterr().err
    assert "fit: 100%" in bars and f"{2 * num_images}/{2 * num_images}" in bars
    assert "score: 100%" in bars and f"{num_images}/{num_images}" in bars
    assert set(tasks) == {"language", "unsupervised", "unseen", "probe", "knn"}
    assert report["probe"] == {"root": str(probe), "split": "the folder", "image_list": None}
    assert f"Linear probe and k-NN: fitted on {probe} (the folder)." in (tmp_path / "out" / "report.md").read_text()
    # without a probe folder of its own, "all" leaves the probe out and "probe" is refused
    same = run(dataclasses.replace(cfg, probe_root="", output=str(tmp_path / "same")), LocalMapper(spec, {}))
    assert not {"probe", "knn"} & set(same["tasks"]) and same["probe"] is None
    with pytest.raises(ConfigError, match="one split"):
        run(dataclasses.replace(cfg, probe_root="", task="probe"), LocalMapper(spec, {}))
    with pytest.raises(ConfigError, match="needs a class named background"):
        run(dataclasses.replace(cfg, background="threshold"), LocalMapper(spec, {}))
    assert report["background"] is None  # no class of this dataset is background: nothing to say
    for task in ("language", "unsupervised", "probe", "knn"):
        assert tasks[task]["student"]["miou"] == pytest.approx(1.0), task
        assert tasks[task]["student"]["pixel_acc"] == pytest.approx(1.0), task
    # each class is exactly one cluster, in k-means' own order; the Hungarian matching maps it back
    clusters = np.array(tasks["unsupervised"]["student"]["cluster_confusion"])
    assert (np.count_nonzero(clusters, axis=1) == 1).all()
    mapping = tasks["unsupervised"]["student"]["cluster_to_class"]
    assert [mapping[j] for j in clusters.argmax(1)] == [0, 1, 2, 3]
    unseen = tasks["unseen"]["student"]
    assert unseen["unseen_classes"] == ["cat"]
    assert unseen["miou_seen"] == unseen["miou_unseen"] == unseen["hiou"] == pytest.approx(1.0)
    # ignored pixels are in no confusion matrix: the total is the labelled pixel count
    masks = [np.asarray(Image.open(p)) for p in sorted((data / "masks").glob("*.png"))]
    assert np.sum(tasks["language"]["student"]["confusion"]) == sum(int((m != 255).sum()) for m in masks)
    assert "| student | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |" in \
        (tmp_path / "out" / "report.md").read_text()



def test_fitting_maps_each_image_once_for_the_clusters_the_probe_and_the_k_nn(checkpoint, tmp_path):
    data, probe = flat_colour_dataset(tmp_path / "flat"), flat_colour_dataset(tmp_path / "probe")
    spec, calls = ModelSpec(checkpoint), []

    class Counting(LocalMapper):
        def __call__(self, rows, methods, work):
            calls.append(len(rows))
            return super().__call__(rows, methods, work)

    cfg = EvalConfig(checkpoint=checkpoint, dataset="generic", data_root=str(data), output=str(tmp_path / "out"),
                     task="unsupervised,probe,knn", probe_root=str(probe), knn_k=3, num_panels=0,
                     baselines=False)
    report = run(cfg, Counting(spec))
    assert calls == [6, 3]  # one fitting pass (3 scored, 3 labelled images), one scoring pass
    assert set(report["tasks"]) == {"unsupervised", "probe", "knn"}
    # what a part draws does not depend on the parts drawn beside it in the same pass
    sources = {"scored": open_dataset("generic", str(data)), "train": open_dataset("generic", str(probe))}
    options = InferenceOptions(0, (1.0,))

    def drawn(draws: dict[str, Draw]) -> dict:
        work = SampleWork(sources, draws, ("student", "untrained"), 16, options, seed=3)
        return gather_samples(work.drawn(LocalMapper(spec)), 10**6, seed=3)

    together = drawn({"clusters": Draw("scored"), "probe": Draw("train"), "knn": Draw("train", 4)})
    for part, draw in (("probe", Draw("train")), ("knn", Draw("train", 4)), ("clusters", Draw("scored"))):
        alone = drawn({part: draw})[part]
        for method, (embeddings, labels) in alone.items():
            torch.testing.assert_close(together[part][method][0], embeddings)
            assert torch.equal(together[part][method][1], labels)
    assert len(together["knn"]["student"][0]) <= 3 * 4 < len(together["probe"]["student"][0])

def test_markdown_table_in_percent_with_gaps_and_the_random_teacher_warning():
    report = {"checkpoint": "m.pt", "dataset": "voc20", "split": "val", "num_images": 2,
              "teacher": {"model": "tiny-rn", "random_init": True},
              "tasks": {"language": {"student": {"miou": 0.4567, "pixel_acc": 0.9},
                                     "teacher": {"miou": None, "pixel_acc": 0.25}},
                        "unsupervised": {"student": {"miou": 0.125, "pixel_acc": 1.0},
                                         "pixels": {"miou": 0.0, "pixel_acc": 0.5}}}}
    table = markdown_table(report)
    assert "RANDOM weights" in table
    assert "| method | language mIoU | language acc | unsupervised mIoU | unsupervised acc |" in table
    assert "| student | 45.7 | 90.0 | 12.5 | 100.0 |" in table
    assert "| CLIP teacher alone (MaskCLIP) | - | 25.0 | - | - |" in table
    assert "| k-means on raw pixels | - | - | 0.0 | 50.0 |" in table
    assert json_safe({"iou": [float("nan"), 0.5]}) == {"iou": [None, 0.5]}
    report["class_names"] = ["sky", "cat"]
    report["tasks"]["language"]["student"]["iou"] = {"sky": 0.5, "cat": None}
    per_class = per_class_tables(report)
    assert "### language" in per_class and "| class | student |" in per_class  # the teacher has no per-class IoU
    assert "| sky | 50.0 |" in per_class and "| cat | - |" in per_class
    assert "### unsupervised" not in per_class


def test_the_report_says_how_the_class_free_head_decided():
    report = {"checkpoint": "m.pt", "dataset": "voc20", "split": "val", "num_images": 2,
              "teacher": {"model": "tiny-rn", "random_init": False},
              "tasks": {"classfree": {"student": {"miou": 0.5, "pixel_acc": 0.5, "seen_pixels_unknown": 0.1}}}}
    assert "Class-free" not in markdown_table(report)  # a report from before the setting: nothing claimed
    for decision, words in (("levels", "decision levels"), ("flat", "decision flat")):
        assert words in markdown_table({**report, "config": {"classfree_decision": decision}})


def test_a_panels_title_carries_the_images_miou_and_an_unmatched_cluster_is_wrong():
    mask = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    assert image_miou(mask.clip(0, 1), mask, 3) == pytest.approx(1.0)  # class 2 in neither: not averaged
    pred = np.array([[0, 0, 1, 255], [0, 0, 1, 1]])  # one pixel of class 1 labelled no class
    assert image_miou(pred, mask, 3) == pytest.approx((1 + 2 / 3) / 2)


def test_a_bad_task_is_a_config_error(checkpoint, corpus, tmp_path):
    assert main(["--checkpoint", checkpoint, "--dataset", "generic", "--data-root", str(corpus),
                 "--output", str(tmp_path), "--task", "nope"]) == 2
    # a generic dataset has no built-in zero-shot split
    assert main(["--checkpoint", checkpoint, "--dataset", "generic", "--data-root", str(corpus),
                 "--output", str(tmp_path), "--task", "unseen"]) == 2


@pytest.mark.slow
def test_every_task_end_to_end_on_ray_and_the_teacher_alone(ray_local, checkpoint, corpus, tmp_path):
    out = tmp_path / "eval"
    probe = tmp_path / "probe"
    write_corpus(str(probe), num_train=0, num_val=4, size=64, seed=1)
    assert main(["--checkpoint", checkpoint, "--dataset", "generic", "--data-root", str(corpus),
                 "--probe-root", str(probe / "val"),
                 "--output", str(out), "--task", "all", "--unseen", "dotted,wavy", "--num-panels", "2",
                 "--scales", "1.0,1.5", "--window", "48", "--num-workers", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    # the teacher (stride 32) also at the student's grid (stride 8): shift-and-stitch, factor 4
    teachers = {"teacher", "teacher_matched"}
    expected = {"language": {"student", *teachers}, "unsupervised": {"student", "pixels", "untrained", *teachers},
                "unseen": {"student", *teachers}, "probe": {"student", "untrained", *teachers},
                "knn": {"student", "untrained", *teachers}}
    assert {t: set(by_method) for t, by_method in report["tasks"].items()} == expected
    for task, by_method in report["tasks"].items():
        for method, scores in by_method.items():
            assert 0 <= scores["miou"] <= 1 and 0 <= scores["pixel_acc"] <= 1, (task, method)
            assert set(scores["iou"]) == set(report["class_names"])
            assert np.sum(scores["confusion"]) == 4 * 64 * 64  # every pixel of the four images
    assert 0 <= report["tasks"]["unseen"]["student"]["hiou"] <= 1
    assert report["teacher"]["random_init"] is True and report["network"]["output_stride"] == 8
    table = (out / "report.md").read_text()
    assert report["teacher"]["matched_factor"] == 4
    summary, per_class = table.split("## Per-class IoU")
    assert "RANDOM weights" in summary and summary.count("\n| ") == 6  # header and five methods
    assert "| dotted |" in per_class and "### knn" in per_class
    panels = sorted(p.name for p in (out / "panels").iterdir())
    assert panels == sorted(f"{t}_{n}.png" for t in expected for n in ("000000", "000003"))
    assert Image.open(out / "panels" / "unsupervised_000000.png").size[1] >= 64

    # the teacher by itself, in this process: the same numbers as its baseline row above
    cfg = EvalConfig(checkpoint="teacher", clip_model="tiny-rn", dataset="generic", data_root=str(corpus),
                     output=str(tmp_path / "teacher"), task="language", scales=(1.0, 1.5), window=48,
                     num_panels=0)
    alone = run(cfg, LocalMapper(ModelSpec("teacher", "tiny-rn")))
    assert set(alone["tasks"]["language"]) == {"teacher"} and alone["network"] is None
    assert alone["tasks"]["language"]["teacher"]["miou"] == pytest.approx(
        report["tasks"]["language"]["teacher"]["miou"], abs=0.02)
    assert not (tmp_path / "teacher" / "panels").exists()  # --num-panels 0: no empty folder


def test_class_free_scores_match_unknown_classes_to_unseen_ones_and_count_leftovers_as_errors():
    names = ["sky", "grass", "cat", "dog"]
    seen = np.array([True, True, False, False])
    # columns: the four classes (only seen ones predicted by name), then three unknown classes
    conf = np.array([
        [8, 1, 0, 0, 1, 0, 0],  # sky: 1 pixel called unknown-0
        [0, 9, 0, 0, 0, 0, 1],  # grass: 1 pixel in unknown-2, which is left over
        [0, 0, 0, 0, 0, 6, 0],  # cat: all in unknown-1
        [1, 0, 0, 0, 7, 0, 2],  # dog: mostly unknown-0
    ])
    scores = classfree_scores(conf, names, seen)
    assert scores["cluster_to_class"][4:] == [3, 2, 255]  # unknown-0 -> dog, unknown-1 -> cat, unknown-2 -> none
    iou = scores["iou"]
    assert iou["sky"] == pytest.approx(8 / (10 + 9 - 8))
    assert iou["grass"] == pytest.approx(9 / (10 + 10 - 9))
    assert iou["cat"] == pytest.approx(1.0)
    assert iou["dog"] == pytest.approx(7 / (10 + 8 - 7))  # its 2 pixels in the left-over class are errors
    assert scores["miou"] == pytest.approx(np.mean(list(iou.values())))
    assert scores["seen_pixels_unknown"] == pytest.approx(2 / 20)
    assert scores["pixel_acc"] == pytest.approx(30 / 36)


def test_a_perfect_student_scores_100_class_free(tmp_path):
    data = flat_colour_dataset(tmp_path / "flat")
    path = str(tmp_path / "model.pt")
    save_model(path, build_network(NetworkConfig(backbone="small", output_stride=8, embedding_dim=16, clip_dim=64,
                                                 projection_hidden=32)), TEACHER)
    teacher = ModelSpec(path).load().teacher
    prototypes = text_prototypes(teacher, NAMES)
    seen = [n for n in NAMES if n != "cat"]
    # the centres of a perfect teacher: one per class, the oracle's own outputs; a name explains a centre
    # exactly when they coincide (the cosine rule at 0.999: these random text vectors are far from each other)
    assert (prototypes @ prototypes.T - torch.eye(4)).max() < 0.999
    save_model(path, build_network(NetworkConfig(backbone="small", output_stride=8, embedding_dim=16, clip_dim=64,
                                                 projection_hidden=32)), TEACHER,
               {"names": seen, "known": text_prototypes(teacher, seen), "centres": prototypes,
                "explained": torch.tensor([True, True, False, True]), "unknown": prototypes[2:3],
                "explain": {"rule": "cosine", "threshold": 0.999}})
    cfg = EvalConfig(checkpoint=path, dataset="generic", data_root=str(data), output=str(tmp_path / "out"),
                     task="classfree", baselines=False, unseen=("cat",), num_panels=1)
    scores = run(cfg, LocalMapper(ModelSpec(path), {"student": Oracle(prototypes)}))["tasks"]["classfree"]["student"]
    assert scores["miou"] == pytest.approx(1.0) and scores["miou_unseen"] == pytest.approx(1.0)
    assert scores["seen_pixels_unknown"] == 0 and scores["cluster_to_class"][4:] == [2]
    assert (tmp_path / "out" / "panels").exists()


def test_unseen_classes_the_model_was_trained_with_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluate, "init_ray", lambda *args: pytest.fail("a cluster was started"))
    data = flat_colour_dataset(tmp_path / "flat")
    path = str(tmp_path / "model.pt")
    net = build_network(NetworkConfig(backbone="small", output_stride=8, embedding_dim=16, clip_dim=64,
                                      projection_hidden=32))
    save_model(path, net, TEACHER, {"names": ["sky", "cat"], "known": torch.zeros(2, 64), "unknown": torch.zeros(0, 64)})
    args = ["--checkpoint", path, "--dataset", "generic", "--data-root", str(data), "--output", str(tmp_path / "o"),
            "--task", "unseen", "--unseen", "cat", "--num-cpus", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained with the names ['cat']" in err[0]
    assert not (tmp_path / "o").exists()


def test_two_model_files_made_from_the_same_teacher_give_the_same_baselines_and_one_key(corpus, tmp_path):
    """What a run over training seeds relies on to score the baselines once: two students of one recipe (other
    weights) share every baseline row and baselines_key; another recipe's file gets another key."""
    cfg = NetworkConfig(backbone="small", output_stride=8, embedding_dim=16, clip_dim=64, projection_hidden=32)
    prototypes = {"names": ["sky"], "known": torch.ones(1, 64), "unknown": torch.zeros(0, 64)}
    reports, keys = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = str(tmp_path / f"s{seed}.pt")
        save_model(path, build_network(cfg), TEACHER, prototypes, {"teacher_last_block": "maskclip"})
        keys.append(baselines_key(ModelSpec(path).load()))
        eval_cfg = EvalConfig(checkpoint=path, dataset="generic", data_root=str(corpus), output=str(tmp_path / f"o{seed}"),
                              task="language,unsupervised", num_panels=0)
        reports.append(run(eval_cfg, LocalMapper(ModelSpec(path)))["tasks"])
    assert keys[0] == keys[1]
    for task, by_method in reports[0].items():
        assert set(by_method) - {"student"}, task  # baselines were scored
        for method in set(by_method) - {"student"}:
            assert by_method[method] == reports[1][task][method], (task, method)
    assert any(reports[0][task]["student"] != reports[1][task]["student"] for task in reports[0])

    def key(**change) -> str:
        path = str(tmp_path / "other.pt")
        save_model(path, build_network(dataclasses.replace(cfg, **change.get("net", {}))), TEACHER,
                   change.get("prototypes", prototypes), {"teacher_last_block": change.get("last_block", "maskclip")})
        return baselines_key(ModelSpec(path, seed=change.get("seed", 0)).load())

    assert key() == keys[0]
    others = [key(net={"output_stride": 4}), key(prototypes={**prototypes, "known": torch.full((1, 64), 2.0)}),
              key(last_block="clearclip"), key(seed=1)]
    assert len({keys[0], *others}) == 5
