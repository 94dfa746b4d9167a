"""The README's first command, in its --quick profile: nothing to a trained, evaluated model and a
report, then a rerun that redoes nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


# The quick profile made smaller still: every stage and every report of the README's first command in
# a few minutes. What the full --quick run scores (the student against its baselines) is a benchmark
# figure (BENCHMARKS.md, "The student against its teacher's own features"): 25 minutes here, too long
# for the suite; tests/model/test_training.py holds that training aligns embeddings with regions.
SMALL = ["--quick", "--num-train", "256", "--num-val", "16", "--num-test", "16", "--num-probe", "16",
         "--samples-per-shard", "64", "--teacher-epochs", "1", "--train-epochs", "1"]


@pytest.mark.slow
def test_main_run_goes_from_nothing_to_a_report_and_a_rerun_redoes_nothing(tmp_path):
    cmd = [sys.executable, "pipelines/main.py", "--name", "e2e", *SMALL, "--runs-root", str(tmp_path)]
    env = {**os.environ, "RAY_ADDRESS": ""}
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = tmp_path / "e2e"
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["config"]["data_root"].endswith("corpus/test")  # the split no setting was chosen on
    assert report["num_images"] == 16
    assert set(report["tasks"]) == {"language", "unsupervised", "unseen", "probe", "knn", "classfree"}
    for task in report["tasks"]:
        for method, scores in report["tasks"][task].items():
            assert 0 <= scores["miou"] <= 1, (task, method)
    assert set(report["tasks"]["classfree"]) == {"student", "teacher", "teacher_matched"}
    assert set(report["tasks"]["unsupervised"]) == {"student", "teacher", "teacher_matched", "pixels", "untrained"}
    assert report["tasks"]["unseen"]["student"]["unseen_classes"] == ["dotted"]
    # the same scenes with any outline: the tasks that tell language (and texture) from shape
    anyshape = json.loads((run / "eval" / "anyshape" / "report.json").read_text())
    assert anyshape["config"]["data_root"].endswith("corpus/test_anyshape")
    assert set(anyshape["tasks"]) == {"language", "unseen", "probe"}
    text = (run / "report.md").read_text()
    assert "| student |" in text and "open_clip_train" in text and "Scored on the test split" in text
    assert "every outline drawn at random" in text and text.count("| student |") >= 2
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert any(p.name.startswith("unsupervised_") for p in (run / "eval" / "panels").iterdir())
    assert "report:" in first.stdout
    # what a person reads: each step's line once (Ray Train's print patch had doubled them), none of Ray
    # Train's per-checkpoint lines, nor its placement-group cleaner's warning every second
    output = first.stdout + first.stderr
    steps = [line for line in output.splitlines() if " img/s data-wait " in line]
    assert steps and len(steps) == len(set(steps)), steps
    for noise in ("Checkpoint successfully created", "Reporting training result", "Failed to query Ray Train"):
        assert noise not in output, noise
    assert json.loads((run / "shards" / "manifest.json").read_text())["num_samples"] == 256

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 written, 4 already complete" in again.stdout and "0 embedded now" in again.stdout
    assert "teacher: reusing" in again.stderr
    assert "exists" in again.stderr + again.stdout  # training is not redone
    assert again.stderr.count("report.json exists") == 2  # nor either evaluation


def test_a_bad_trainer_setting_stops_the_run_before_any_stage(tmp_path, capsys):
    from pipelines.main import main

    assert main(["--runs-root", str(tmp_path), "--train-overrides", "loss.no_such_weight=1"]) == 2
    assert "loss.no_such_weight" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_quick_profiles_trainer_settings_give_way_to_the_users():
    from common.config import parse_config
    from pipelines.main import PROFILES, MainConfig
    from trainer.config import TrainConfig

    quick = parse_config(MainConfig, ["--quick"], profiles=PROFILES)
    assert parse_config(TrainConfig, quick.train_args()).loss.semantic_weight == 4
    cfg = parse_config(MainConfig, ["--quick", "--train-overrides", "loss.semantic_weight=2,optim.lr=0.1"],
                       profiles=PROFILES)
    assert cfg.train_args()[-2:] == ["loss.semantic_weight=2", "optim.lr=0.1"]  # the user's list, whole
    train = parse_config(TrainConfig, cfg.train_args())
    assert (train.loss.semantic_weight, train.optim.lr) == (2, 0.1)
    assert (cfg.num_train, cfg.teacher_epochs, cfg.teacher_lr_schedule) == (3000, 4, "const")


@pytest.mark.slow
def test_the_whole_run_on_your_own_data(tmp_path):
    """Your images (no captions, nested, PNG), your labelled folders and classes, a teacher file: the
    same stages, the report scored on your evaluation folder."""
    from PIL import Image

    from demo.synth import write_corpus
    from model.clip_teacher import open_clip  # open_clip with the tiny architectures registered

    write_corpus(str(tmp_path / "made"), num_train=24, num_val=6, size=64, num_probe=6)
    photos = tmp_path / "photos" / "holiday"
    photos.mkdir(parents=True)
    for jpg in sorted((tmp_path / "made" / "train").glob("*.jpg")):
        Image.open(jpg).save(photos / (jpg.stem + ".png"))
    teacher = tmp_path / "teacher.pt"  # random weights, saved as a user's checkpoint file: the run, not its quality
    torch.save(open_clip().create_model("tiny-rn").state_dict(), teacher)
    cmd = [sys.executable, "pipelines/main.py", "--name", "mine", "--runs-root", str(tmp_path / "runs"),
           "--train-images", str(tmp_path / "photos"), "--eval-root", str(tmp_path / "made" / "val"),
           "--probe-root", str(tmp_path / "made" / "probe"), "--clip-model", "tiny-rn", "--clip-pretrained",
           str(teacher), "--unseen", "dotted", "--image-size", "64", "--samples-per-shard", "12",
           "--train-epochs", "1", "--num-cpus", "2", "--seeds", "0,1"]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "runs" / "mine"
    report = json.loads((run / "eval" / "report.json").read_text())  # two seeds: their mean and spread
    assert report["config"]["data_root"] == str(tmp_path / "made" / "val")
    assert report["seeds"] == [0, 1] and len(report["per_seed"]) == 2
    language = report["tasks"]["language"]["student"]
    per_seed = [json.loads((run / "eval" / f"s{s}" / "report.json").read_text())["tasks"]["language"]["student"]["miou"]
                for s in (0, 1)]
    assert language["miou"] == pytest.approx(sum(per_seed) / 2)
    assert language["miou_sd"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2 ** 0.5)
    assert (run / "train" / "mine-s1" / "model.pt").exists() and " ± " in (run / "report.md").read_text()
    # one teacher, prototypes and architecture for both seeds: the baselines are scored with seed 0's file alone
    assert report["baselines_from"] == 0 and "Baselines: scored once, with seed 0" in (run / "report.md").read_text()
    assert {m for t in report["per_seed"][1].values() for m in t} == {"student"}
    teacher = report["tasks"]["probe"]["teacher"]
    assert teacher["miou"] == report["per_seed"][0]["probe"]["teacher"]["miou"] and teacher["miou_sd"] is None
    assert set(report["tasks"]) == {"language", "unsupervised", "unseen", "probe", "knn", "classfree"}
    assert report["per_seed"][0]["unseen"]["student"]["unseen_classes"] == ["dotted"]
    assert json.loads((run / "shards" / "manifest.json").read_text())["num_samples"] == 24
    assert not (run / "corpus").exists()  # nothing generated
    assert "dotted" not in (run / "seen_classes.txt").read_text().split()
    assert (run / "report.md").exists() and "report:" in done.stdout
