"""The demo's teacher stage: open_clip_train on our shards, cached by its recipe. One recipe gives one
teacher, bit for bit (open_clip_train's sample shuffle seeded, demo/teacher_train.py); a training killed
mid-way resumes on the rerun from its last epoch, on the same epochs' data order. (Not bit-equal to the
uninterrupted teacher: the loader worker's augmentation generator starts afresh with the rerun.)"""

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from demo import synth
from demo.synth import write_corpus
from demo.teacher import TeacherRecipe, ensure_teacher, export_teacher, shipped_teacher
from demo.teacher import main as teacher_main
from model.clip_teacher import open_clip

REPO = Path(__file__).resolve().parents[2]
# 3 steps an epoch: the kill lands after the first epoch's checkpoint, before the last epoch ends
RECIPE = TeacherRecipe("tiny-rn", epochs=3, num_train=48, image_size=128, batch_size=16, warmup_steps=1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    write_corpus(str(root / "corpus"), num_train=48, num_val=0, size=128)
    # the shard job in a process of its own, as a user runs it: a Ray session in this test process would
    # be one more thing the next module's cluster (tests/pipelines/test_autoscaling.py) has to live with
    command = [sys.executable, "pipelines/shard.py", "--input", str(root / "corpus" / "train"), "--output",
               str(root / "shards"), "--samples-per-shard", "16", "--image-size", "128", "--resize-mode", "none"]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return str(root / "shards")


def weights(checkpoint: str) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_one_recipe_gives_one_teacher(shards, tmp_path):
    first, second = (weights(ensure_teacher(RECIPE, shards, str(tmp_path / n))[0]) for n in ("a", "b"))
    assert first.keys() == second.keys()
    for name, weight in first.items():  # (they differed by up to 0.23 before the shuffle was seeded)
        assert torch.equal(weight, second[name]), name


@pytest.mark.slow
def test_a_killed_teacher_training_resumes_from_its_last_epoch(shards, tmp_path):
    root = tmp_path / "teachers"
    # the stage as the main job runs it, in a process group of its own so that the trainer under it dies too
    code = ("from demo.teacher import TeacherRecipe, ensure_teacher; "
            f"ensure_teacher({RECIPE!r}, {shards!r}, {str(root)!r})")
    stage = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs = root / RECIPE.key / "logs" / "openclip"
    deadline = time.time() + 300
    while not (logs / "checkpoints" / "epoch_latest.pt").exists() and stage.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert stage.poll() is None, "the training ended before it could be killed"
    os.killpg(stage.pid, signal.SIGKILL)
    stage.wait()
    assert not (root / RECIPE.key / "teacher.pt").exists()

    teacher, note = ensure_teacher(RECIPE, shards, str(root))  # the rerun
    log = (logs / "out.log").read_text()
    before, resumed, after = log.partition("=> resuming checkpoint")
    assert resumed, log[-2000:]
    started = [int(n) for n in re.findall(r"Start epoch (\d+)", after)]
    assert "Start epoch 0" in before and started and started[0] >= 1, log[-2000:]
    assert started == list(range(started[0], RECIPE.epochs))  # on from the checkpoint, to the recipe's end
    saved = torch.load(teacher, map_location="cpu", weights_only=False)
    assert saved["epoch"] == RECIPE.epochs
    open_clip().create_model(RECIPE.model).load_state_dict(saved["state_dict"])  # every weight, none extra
    assert not (logs / "checkpoints").exists()  # the optimizer's checkpoints are dropped once the teacher is out
    assert ensure_teacher(RECIPE, shards, str(root)) == (teacher, note)  # a finished teacher is reused


def test_a_teacher_is_cached_for_one_corpus(monkeypatch):
    # captions that changed (the background named, empty scenes) must not reuse a teacher trained on the old ones
    before = RECIPE.key
    monkeypatch.setattr(synth, "CORPUS_VERSION", synth.CORPUS_VERSION + 1)
    assert RECIPE.key != before


def test_a_shipped_teacher_is_used_in_float16_unless_a_run_trains_its_own(tmp_path, capsys):
    trained = tmp_path / "trained" / RECIPE.key  # a cache folder as ensure_teacher leaves it
    trained.mkdir(parents=True)
    torch.manual_seed(0)
    weights = open_clip().create_model(RECIPE.model).state_dict()
    torch.save({"epoch": RECIPE.epochs, "name": "openclip", "state_dict": weights}, trained / "teacher.pt")
    (trained / "recipe.json").write_text(json.dumps(dataclasses.asdict(RECIPE)))
    assets = tmp_path / "assets"
    asset = export_teacher(str(trained), assets)
    assert asset == assets / f"teacher-{RECIPE.key}.safetensors" and shipped_teacher(RECIPE, assets) == asset
    assert asset.stat().st_size < 0.55 * (trained / "teacher.pt").stat().st_size  # float16

    # no shards: the shipped teacher is used without training
    checkpoint, note = ensure_teacher(RECIPE, str(tmp_path / "no-shards"), str(tmp_path / "cache"), assets=assets)
    assert checkpoint == str(tmp_path / "cache" / RECIPE.key / "shipped.pt") and "shipped with the checkout" in note
    loaded = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for name, weight in weights.items():
        expected = weight.half().float() if weight.is_floating_point() else weight
        assert loaded[name].dtype == weight.dtype and torch.equal(loaded[name], expected), name
    open_clip().create_model(RECIPE.model).load_state_dict(loaded)  # every weight, none extra
    assert ensure_teacher(RECIPE, "", str(tmp_path / "cache"), assets=assets) == (checkpoint, note)  # cached

    with pytest.raises(Exception, match="no-shards"):  # --teacher train: the training, which needs shards
        ensure_teacher(RECIPE, str(tmp_path / "no-shards"), str(tmp_path / "cache"), shipped=False, assets=assets)
    assert not (tmp_path / "cache" / RECIPE.key / "teacher.pt").exists()

    assert teacher_main(["export", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nothing'} holds no trained teacher (teacher.pt and recipe.json)"


def test_the_quick_profiles_teacher_is_shipped():
    """What `make demo` runs on: the README table's teacher, whole, for the quick profile's recipe."""
    from common.config import parse_config
    from pipelines.main import PROFILES, MainConfig

    recipe = parse_config(MainConfig, ["--quick"], profiles=PROFILES).teacher_recipe
    asset = shipped_teacher(recipe)
    assert asset is not None, f"no shipped teacher for the quick profile's recipe {recipe.key}"
    with safe_open(str(asset), "pt") as fh:
        assert TeacherRecipe(**json.loads(fh.metadata()["recipe"])) == recipe
    open_clip().create_model(recipe.model).load_state_dict(load_file(str(asset)))
    # the file is the one its README names (a rebuilt teacher is another file, and another table)
    listed = re.search(rf"`{asset.name}` \|.*`([0-9a-f]{{64}})`", (asset.parent / "README.md").read_text())
    assert listed and hashlib.sha256(asset.read_bytes()).hexdigest() == listed.group(1)
