"""The demo's CLIP teacher when no pretrained one can be downloaded: a tiny CLIP trained on the corpus's
captions by OpenCLIP's own trainer (open_clip_train), reading our shards directly. Cached by its
recipe, so every run with the same recipe reuses one teacher; an interrupted training resumes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import torch

from common.storage import join
from demo import synth
from formats.manifest import read_manifest

log = logging.getLogger(__name__)


# Part of a recipe's cache key. 2: open_clip_train's sample shuffle seeded (demo/teacher_train.py); a
# teacher cached before was one draw of its recipe, not the recipe's one teacher.
TRAINER_VERSION = 2


@dataclass(frozen=True)
class TeacherRecipe:
    model: str
    epochs: int
    num_train: int  # part of the key: a teacher is trained for one corpus
    image_size: int
    batch_size: int = 64
    lr: float = 5e-4
    lr_scheduler: str = "cosine"  # open_clip_train's --lr-scheduler: cosine or const
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0

    @property
    def key(self) -> str:
        return hashlib.sha1(json.dumps({**dataclasses.asdict(self), "trainer": TRAINER_VERSION,
                                        "corpus": synth.CORPUS_VERSION},
                                       sort_keys=True).encode()).hexdigest()[:12]


def open_clip_train_args(recipe: TeacherRecipe, shards: str, logs: str) -> list[str]:
    manifest = read_manifest(shards)
    return [
        "--model", recipe.model, "--dataset-type", "webdataset",
        "--train-data", "::".join(join(shards, s["name"]) for s in manifest["shards"]),
        "--train-num-samples", str(manifest["num_samples"]), "--batch-size", str(recipe.batch_size),
        "--epochs", str(recipe.epochs), "--lr", str(recipe.lr), "--lr-scheduler", recipe.lr_scheduler,
        "--wd", str(recipe.weight_decay),
        "--warmup", str(recipe.warmup_steps), "--seed", str(recipe.seed), "--workers", "1", "--device", "cpu",
        "--precision", "fp32", "--logs", logs, "--name", "openclip", "--save-frequency", "0",
        "--save-most-recent", "--resume", "latest", "--report-to", "", "--log-every-n-steps", "20",
    ]


def ensure_teacher(recipe: TeacherRecipe, shards: str, cache_root: str) -> tuple[str, str]:
    """(checkpoint file, a sentence for the report) for `recipe`, training it if no cached copy exists."""
    folder = join(cache_root, recipe.key)
    checkpoint = join(folder, "teacher.pt")
    note = (f"trained here by open_clip_train ({recipe.model}, {recipe.epochs} epochs over {recipe.num_train} "
            f"captioned scenes, {recipe.lr_scheduler} learning rate; no pretrained weights can be downloaded offline), cached at {folder}")
    if os.path.exists(checkpoint):
        log.info("teacher: reusing %s", checkpoint)
        return checkpoint, note
    os.makedirs(folder, exist_ok=True)
    log.info("teacher: training %s with open_clip_train into %s", recipe.model, folder)
    command = [sys.executable, "-m", "demo.teacher_train", *open_clip_train_args(recipe, shards, join(folder, "logs"))]
    subprocess.run(command, check=True)
    checkpoints = join(folder, "logs", "openclip", "checkpoints")
    final = torch.load(join(checkpoints, f"epoch_{recipe.epochs}.pt"), map_location="cpu", weights_only=False)
    # the weights alone: the optimizer's moments triple the file every embed actor would read
    torch.save({k: final[k] for k in ("epoch", "name", "state_dict")}, checkpoint + ".tmp")
    os.replace(checkpoint + ".tmp", checkpoint)
    shutil.rmtree(checkpoints)
    with open(join(folder, "recipe.json"), "w") as fh:
        json.dump(dataclasses.asdict(recipe), fh, indent=1)
    return checkpoint, note
