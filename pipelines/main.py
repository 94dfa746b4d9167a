"""The main job: from nothing to a trained, evaluated model with a report a person can read.

    python pipelines/main.py --name demo            # local Ray, generated corpus, no downloads
    python pipelines/main.py --name demo --quick    # the short profile the tests use
    python pipelines/main.py --name real --clip-model ViT-B-16 --clip-pretrained openai ...
    RAY_ADDRESS=auto python pipelines/main.py ...   # on a running cluster

Stages: synthetic corpus -> shards -> CLIP teacher (trained here by OpenCLIP's own trainer on
the captions unless --clip-pretrained is given; cached by its recipe) -> CLIP precompute -> training
(Ray Train + DeepSpeed, two workers) -> evaluation -> runs/NAME/report.md. Every stage skips what is
already done, so rerunning after a kill resumes, and a finished run is not redone.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Run as a file (`python pipelines/main.py`, as under `ray job submit`): this checkout's packages,
# not an installed copy of them.
if not __package__:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.config import ConfigError, build_config, job_config, parse_config
from common.storage import filesystem, join
from demo import synth
from demo.report import write_report
from demo.teacher import TeacherRecipe, ensure_teacher
from formats.sidecar import STORAGE_FORMATS
from model.superpixels import SuperpixelConfig
from pipelines import embed, evaluate, shard
from pipelines.evaluation.report import markdown_table
from trainer.config import TrainConfig

log = logging.getLogger("main")
# Named settings a user can read and override: `--quick` is pipelines/profiles/quick.yaml.
PROFILES = {p.stem: str(p) for p in sorted((Path(__file__).parent / "profiles").glob("*.yaml"))}


@dataclass(frozen=True)
class MainConfig:
    name: str = field(default="demo", metadata={"help": "run name: outputs go to runs/NAME"})
    runs_root: str = "runs"
    num_train: int = 3000
    num_val: int = 200
    num_probe: int = 100
    image_size: int = 128
    samples_per_shard: int = 500
    clip_model: str = field(default="tiny-rn", metadata={"help": "open_clip architecture of the teacher"})
    clip_pretrained: str = field(default="", metadata={"help": "tag, file or s3:// checkpoint; empty = train one here"})
    teacher_epochs: int = 12
    teacher_lr_schedule: str = field(default="cosine",
                                     metadata={"help": "cosine or const (open_clip_train's --lr-scheduler)"})
    clip_storage: str = field(default="float16", metadata={
        "help": "sidecar form: float16 or int8, or none (superpixels only: the trainer runs the teacher on each "
                "view, teacher.mode=online)"})
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    # the tiny teacher cannot tell zigzag at all (0.7 IoU alone), so a class it half knows is held back
    unseen: tuple[str, ...] = field(default=("dotted",), metadata={"help": "class names training never sees"})
    train_config: str = "trainer/configs/tiny.yaml"
    train_epochs: int = 6
    train_overrides: tuple[str, ...] = field(default=(), metadata={
        "help": "key=value settings of the trainer's config on top of train_config, e.g. loss.semantic_weight=4"})
    num_cpus: int = 0

    def __post_init__(self):
        if min(self.num_train, self.num_val, self.image_size, self.samples_per_shard, self.teacher_epochs) < 1:
            raise ConfigError("num_train, num_val, image_size, samples_per_shard and teacher_epochs must be positive")
        if self.teacher_lr_schedule not in ("cosine", "const"):
            raise ConfigError(f"teacher_lr_schedule must be cosine or const, got {self.teacher_lr_schedule!r}")
        if self.clip_storage not in STORAGE_FORMATS:
            raise ConfigError(f"clip_storage must be one of {', '.join(STORAGE_FORMATS)}, got {self.clip_storage!r}")
        unknown = set(self.unseen) - set(synth.CLASSES)
        if unknown:
            raise ConfigError(f"unseen names {sorted(unknown)} are not classes of the corpus {synth.CLASSES}")
        parse_config(TrainConfig, self.train_args())

    def path(self, *parts: str) -> str:
        return join(self.runs_root, self.name, *parts)

    def train_args(self) -> list[str]:
        """The trainer's command line for this run (checked in __post_init__, before any stage runs)."""
        return ["--config", self.train_config, f"data.shards={self.path('shards')}", f"data.clip={self.path('clip')}",
                f"epochs={self.train_epochs}", f"run.name={self.name}", f"run.storage_path={self.path('train')}",
                f"run.log_dir={self.path('logs')}",
                *(["teacher.mode=online"] if self.clip_storage == "none" else []), *self.train_overrides]


def stage_corpus(cfg: MainConfig) -> None:
    fs, _ = filesystem(cfg.path())
    marker = cfg.path("corpus", "_SUCCESS")
    if fs.exists(marker):
        log.info("corpus: already generated")
        return
    synth.write_corpus(cfg.path("corpus"), cfg.num_train, cfg.num_val, cfg.image_size, num_probe=cfg.num_probe)
    fs.pipe_file(marker, b"")


def stage_shards(cfg: MainConfig) -> dict:
    return shard.run(shard.ShardConfig(
        input=cfg.path("corpus", "train"), output=cfg.path("shards"), samples_per_shard=cfg.samples_per_shard,
        image_size=cfg.image_size, resize_mode="none", num_cpus=cfg.num_cpus))


def stage_embed(cfg: MainConfig, pretrained: str) -> dict:
    fs, _ = filesystem(cfg.path())
    seen = [c for c in synth.CLASSES if c not in cfg.unseen]
    fs.pipe_file(cfg.path("seen_classes.txt"), ("\n".join(seen) + "\n").encode())
    return embed.run(embed.EmbedConfig(input=cfg.path("shards"), output=cfg.path("clip"), clip_model=cfg.clip_model,
                                       clip_pretrained=pretrained, classes=cfg.path("seen_classes.txt"),
                                       storage=cfg.clip_storage, superpixels=cfg.superpixels, num_unknown=8,
                                       num_cpus=cfg.num_cpus))


def stage_train(cfg: MainConfig) -> str:
    from trainer import train

    model_file = cfg.path("train", cfg.name, "model.pt")
    fs, _ = filesystem(model_file)
    if fs.exists(model_file):
        log.info("train: %s exists", model_file)
        return model_file
    result = train.run(parse_config(TrainConfig, cfg.train_args()))
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    return model_file


def stage_evaluate(cfg: MainConfig, model_file: str) -> dict:
    return evaluate.run(build_config(evaluate.EvalConfig, {
        "checkpoint": model_file, "dataset": "generic", "data_root": cfg.path("corpus", "val"),
        "output": cfg.path("eval"), "unseen": cfg.unseen, "probe_root": cfg.path("corpus", "probe"),
        "num_panels": 4, "num_cpus": cfg.num_cpus}))


def main(argv: list[str] | None = None) -> int:
    cfg = job_config(MainConfig, argv, __doc__, profiles=PROFILES)
    if cfg is None:
        return 2
    stage_corpus(cfg)
    manifest = stage_shards(cfg)
    if manifest.get("failed"):
        return 1
    recipe = TeacherRecipe(cfg.clip_model, cfg.teacher_epochs, cfg.num_train, cfg.image_size,
                           lr_scheduler=cfg.teacher_lr_schedule)
    pretrained, teacher_note = (cfg.clip_pretrained, f"given: {cfg.clip_pretrained}") if cfg.clip_pretrained \
        else ensure_teacher(recipe, cfg.path("shards"), join(cfg.runs_root, "_teachers"))
    if not stage_embed(cfg, pretrained)["complete"]:
        return 1
    model_file = stage_train(cfg)
    report = stage_evaluate(cfg, model_file)
    path = write_report(cfg.path(), markdown_table(report), teacher_note, cfg.path("logs", cfg.name, "metrics.jsonl"))
    print(open(path).read())
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
