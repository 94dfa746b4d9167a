"""The demo's CLIP teacher when no pretrained one can be downloaded: a tiny CLIP trained on the corpus's
captions by OpenCLIP's own trainer (open_clip_train), reading our shards directly. Cached by its
recipe, so every run with the same recipe reuses one teacher; an interrupted training resumes.

A recipe trains to one teacher bit for bit on one set of packages, not across them: a fresh environment
(other releases of Pillow, numpy or open_clip) drew another teacher, and another README table. So the
teacher a README table came from is shipped with the checkout (demo/assets/, its weights in float16,
named by the recipe's key) and used unless a run asks to train its own:

    python pipelines/main.py --quick --name rebuild --teacher train   # the bootstrap: trains it here
    python -m demo.teacher export runs/_teachers/KEY                  # ships that teacher (demo/assets/)
"""

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
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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


ASSETS = Path(__file__).resolve().parent / "assets"


def asset_path(recipe: TeacherRecipe, assets: Path = ASSETS) -> Path:
    """Where the teacher of `recipe` is shipped: one file a recipe key."""
    return assets / f"teacher-{recipe.key}.safetensors"


def shipped_teacher(recipe: TeacherRecipe, assets: Path = ASSETS) -> Path | None:
    """The teacher shipped with the checkout for `recipe`, if there is one."""
    path = asset_path(recipe, assets)
    return path if path.exists() else None


def export_teacher(folder: str, assets: Path = ASSETS) -> Path:
    """Ship the teacher trained in `folder` (a cache folder of ensure_teacher: teacher.pt, recipe.json): its
    weights in float16 (half the file; the shipped teacher is what a README's figures come from, not the
    float32 one), as assets/teacher-KEY.safetensors."""
    with open(join(folder, "recipe.json")) as fh:
        recipe = TeacherRecipe(**json.load(fh))
    weights = torch.load(join(folder, "teacher.pt"), map_location="cpu", weights_only=False)["state_dict"]
    assets.mkdir(parents=True, exist_ok=True)
    path = asset_path(recipe, assets)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, str(path) + ".tmp",
              metadata={"recipe": json.dumps(dataclasses.asdict(recipe)), "trainer": str(TRAINER_VERSION),
                        "corpus": str(synth.CORPUS_VERSION)})
    os.replace(str(path) + ".tmp", path)
    return path


def ensure_teacher(recipe: TeacherRecipe, shards: str, cache_root: str, shipped: bool = True,
                   assets: Path = ASSETS) -> tuple[str, str]:
    """(checkpoint file, a sentence for the report) for `recipe`: the shipped teacher when there is one and
    `shipped`, else one trained here (cached: trained once, an interrupted training resumed)."""
    folder = join(cache_root, recipe.key)
    asset = shipped_teacher(recipe, assets) if shipped else None
    what = (f"open_clip_train ({recipe.model}, {recipe.epochs} epochs over {recipe.num_train} captioned scenes, "
            f"{recipe.lr_scheduler} learning rate; no pretrained weights can be downloaded offline)")
    if asset is not None:
        # a float32 copy in the run's own cache, as a trained teacher's: the model files name it, every actor reads it
        checkpoint = join(folder, "shipped.pt")
        if not os.path.exists(checkpoint):
            os.makedirs(folder, exist_ok=True)
            weights = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(asset)).items()}
            torch.save({"epoch": recipe.epochs, "name": asset.name, "state_dict": weights}, checkpoint + ".tmp")
            os.replace(checkpoint + ".tmp", checkpoint)
        log.info("teacher: the shipped %s (--teacher train trains one here)", asset.name)
        where = f"demo/assets/{asset.name}" if asset.parent == ASSETS else str(asset)
        return checkpoint, f"shipped with the checkout ({where}: trained by {what}; its weights in float16)"
    checkpoint = join(folder, "teacher.pt")
    note = f"trained here by {what}, cached at {folder}"
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


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m demo.teacher", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="ship a teacher trained here (demo/assets/)")
    export.add_argument("folder", help="its cache folder: RUNS_ROOT/_teachers/KEY (teacher.pt, recipe.json)")
    args = parser.parse_args(argv)
    if not os.path.isfile(join(args.folder, "teacher.pt")) or not os.path.isfile(join(args.folder, "recipe.json")):
        print(f"error: {args.folder} holds no trained teacher (teacher.pt and recipe.json)", file=sys.stderr)
        return 2
    path = export_teacher(args.folder)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"shipped: {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
