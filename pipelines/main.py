"""The main job: from nothing to a trained, evaluated model with a report a person can read.

    python pipelines/main.py --name demo            # local Ray, generated corpus, no downloads
    python pipelines/main.py --name demo --quick    # the short profile (pipelines/profiles/quick.yaml)
    python pipelines/main.py --name real --clip-model ViT-B-16 --clip-pretrained openai ...
    python pipelines/main.py --name mine --train-images photos/ --eval-root labelled/ \
        --clip-model ViT-B-16 --clip-pretrained openai --unseen cat   # your own data
    RAY_ADDRESS=auto python pipelines/main.py ...   # on a running cluster

Stages: synthetic corpus (or your --train-images) -> shards -> CLIP teacher (unless --clip-pretrained is
given: the one shipped for the recipe in demo/assets, else trained here by OpenCLIP's own trainer on the
corpus' captions, `--teacher train` to train it anyway; cached by its recipe) -> CLIP precompute ->
training (Ray Train + DeepSpeed, two workers) -> evaluation (the corpus' test scenes, or your --eval-root)
-> runs/NAME/report.md. Every stage skips what is already done, so
rerunning after a kill resumes, and a finished run is not redone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Run as a file (`python pipelines/main.py`, as under `ray job submit`): this checkout's packages,
# not an installed copy of them.
if not __package__:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import logs  # before anything imports ray: it reads its log settings then

logs.drop_ray_worker_noise()

from common.config import ConfigError, build_config, job_config, parse_config
from common.storage import filesystem, join, read_json, write_json_atomic
from demo import synth
from demo.report import write_report
from demo.teacher import TeacherRecipe, ensure_teacher
from formats.datasets import open_dataset
from formats.prototypes import read_class_names
from formats.sidecar import STORAGE_FORMATS
from formats.teacher_weights import check_teacher
from model.superpixels import SuperpixelConfig
from pipelines import embed, evaluate, shard
from pipelines.evaluation.report import json_safe, markdown_table, per_class_tables, seeds_summary
from pipelines.inference.predict import ModelSpec, baselines_key
from trainer.config import TrainConfig

log = logging.getLogger("main")
# Named settings a user can read and override: `--quick` is pipelines/profiles/quick.yaml.
PROFILES = {p.stem: str(p) for p in sorted((Path(__file__).parent / "profiles").glob("*.yaml"))}
CHECKOUT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class MainConfig:
    name: str = field(default="demo", metadata={"help": "run name: outputs go to runs/NAME"})
    runs_root: str = "runs"
    num_train: int = 3000
    num_val: int = field(default=200, metadata={"help": "labelled dev scenes (corpus/val): what settings are chosen on"})
    num_test: int = field(default=200, metadata={
        "help": "labelled test scenes (corpus/test), a seed range of their own: what the report scores; the same "
                "scenes with any outline (corpus/test_anyshape) are scored too"})
    eval_split: str = field(default="test", metadata={
        "help": "the corpus split the report scores: test, or dev (choosing a setting: never on test)"})
    num_probe: int = 100
    image_size: int = 128
    samples_per_shard: int = 500
    clip_model: str = field(default="tiny-rn", metadata={"help": "open_clip architecture of the teacher"})
    clip_pretrained: str = field(default="", metadata={"help": "tag, file or s3:// checkpoint; empty = the demo's teacher (--teacher)"})
    teacher: str = field(default="shipped", metadata={
        "help": "without --clip-pretrained: shipped (the teacher demo/assets holds for the recipe, what the README's "
                "table came from; else one trained here) or train (train one here: the bootstrap)"})
    teacher_epochs: int = 12
    teacher_lr_schedule: str = field(default="cosine",
                                     metadata={"help": "cosine or const (open_clip_train's --lr-scheduler)"})
    clip_storage: str = field(default="float16", metadata={
        "help": "sidecar form: float16 or int8, or none (superpixels only: the trainer runs the teacher on each "
                "view, teacher.mode=online)"})
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    explain_threshold: float = field(default=embed.EmbedConfig.explain_threshold, metadata={
        "help": "the embed job's: the share of the largest margin a centre needs for a name to explain it; it "
                "depends on the teacher: choose it on the dev split (bench/bench_semantic_targets.py --split val)"})
    num_unknown: int = field(default=8, metadata={
        "help": "k-means centres of the teacher's features tried as unknown prototypes; 0 = the semantic term over "
                "the known names alone"})
    unseen: tuple[str, ...] = field(default=(), metadata={
        "help": "class names training never sees, scored as unseen; empty: the corpus' dotted, none on your data"})
    train_images: str = field(default="", metadata={
        "help": "your training images: a folder, prefix, URL list or glob (what the shard job reads); empty = the "
                "generated corpus"})
    eval_root: str = field(default="", metadata={
        "help": "with --train-images: your labelled evaluation folder in the generic layout (images/, masks/, "
                "classes.txt)"})
    probe_root: str = field(default="", metadata={
        "help": "with --train-images: a second labelled folder (generic layout) for the linear probe; empty = no probe"})
    classes: str = field(default="", metadata={
        "help": "with --train-images: class names, one a line; empty = EVAL_ROOT/classes.txt"})
    train_config: str = field(default="trainer/configs/tiny.yaml", metadata={
        "help": "the trainer's YAML config; a relative path not found in the working folder is the checkout's"})
    train_epochs: int = 6
    train_overrides: tuple[str, ...] = field(default=(), metadata={
        "help": "key=value settings of the trainer's config on top of train_config, e.g. loss.semantic_weight=4"})
    seeds: tuple[int, ...] = field(default=(), metadata={
        "help": "train and evaluate once per seed (the trainer's run.seed), the report the mean ± sd over them; "
                "one teacher serves them all (its own draw is not in the spread); empty = one run"})
    num_cpus: int = 0

    def __post_init__(self):
        if min(self.num_train, self.num_val, self.num_test, self.image_size, self.samples_per_shard,
               self.teacher_epochs) < 1:
            raise ConfigError("num_train, num_val, num_test, image_size, samples_per_shard and teacher_epochs must be "
                              "positive")
        if self.eval_split not in ("test", "dev"):
            raise ConfigError(f"eval_split must be test or dev, got {self.eval_split!r}")
        if self.teacher not in ("shipped", "train"):
            raise ConfigError(f"teacher must be shipped or train, got {self.teacher!r}")
        if self.teacher == "train" and self.clip_pretrained:
            raise ConfigError("--teacher train trains the demo's teacher: leave out --clip-pretrained, or --teacher")
        if self.teacher_lr_schedule not in ("cosine", "const"):
            raise ConfigError(f"teacher_lr_schedule must be cosine or const, got {self.teacher_lr_schedule!r}")
        if self.clip_storage not in STORAGE_FORMATS:
            raise ConfigError(f"clip_storage must be one of {', '.join(STORAGE_FORMATS)}, got {self.clip_storage!r}")
        if self.train_images:
            if not self.eval_root:
                raise ConfigError("--train-images needs --eval-root: a labelled folder (images/, masks/, classes.txt) "
                                  "to evaluate on")
            if not self.clip_pretrained:
                raise ConfigError("--train-images needs a teacher: --clip-pretrained (an open_clip tag, a file or an "
                                  "s3:// checkpoint); one is trained here only on the generated corpus' captions")
        elif self.eval_root or self.probe_root or self.classes:
            raise ConfigError("--eval-root, --probe-root and --classes describe your own data: give --train-images too")
        else:
            unknown = set(self.unseen) - set(synth.CLASSES)
            if unknown:
                raise ConfigError(f"unseen names {sorted(unknown)} are not classes of the corpus {synth.CLASSES}")
        if self.seeds and any(o.startswith("run.seed=") for o in self.train_overrides):
            raise ConfigError("--seeds sets run.seed for each run: leave run.seed out of --train-overrides")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds repeat: {self.seeds}")
        parse_config(TrainConfig, self.train_args())
        self.embed_config("")  # its settings checked here, before any stage runs

    @property
    def train_config_path(self) -> str:
        """The checkout's shipped configs are found from any working folder (a user's own path wins)."""
        shipped = CHECKOUT / self.train_config
        return str(shipped) if not os.path.exists(self.train_config) and shipped.exists() else self.train_config

    @property
    def held_out(self) -> tuple[str, ...]:
        """The unseen classes: the user's, else on the generated corpus dotted: a class the tiny teacher knows by
        its name (the shipped teacher: 45.7 IoU on the test split, zigzag 0.5), so that finding it unseen is a fair test."""
        return self.unseen or (() if self.train_images else ("dotted",))

    @property
    def teacher_recipe(self) -> TeacherRecipe:
        return TeacherRecipe(self.clip_model, self.teacher_epochs, self.num_train, self.image_size,
                             lr_scheduler=self.teacher_lr_schedule)

    def embed_config(self, pretrained: str) -> embed.EmbedConfig:
        """The embed job's settings for this run, its teacher `pretrained`."""
        return embed.EmbedConfig(input=self.path("shards"), output=self.path("clip"), clip_model=self.clip_model,
                                 clip_pretrained=pretrained, classes=self.path("seen_classes.txt"),
                                 storage=self.clip_storage, superpixels=self.superpixels, num_unknown=self.num_unknown,
                                 explain_threshold=self.explain_threshold, num_cpus=self.num_cpus)

    def class_names(self) -> list[str]:
        """Every class the evaluation knows: the corpus', or the user's list (a ConfigError when unreadable)."""
        if not self.train_images:
            return list(synth.CLASSES)
        return read_class_names(self.classes or join(self.eval_root, "classes.txt"))

    def path(self, *parts: str) -> str:
        return join(self.runs_root, self.name, *parts)

    def run_name(self, seed: int | None = None) -> str:
        return self.name if seed is None else f"{self.name}-s{seed}"

    def train_args(self, seed: int | None = None) -> list[str]:
        """The trainer's command line for this run, or its run with `seed` (checked in __post_init__, before
        any stage runs)."""
        return ["--config", self.train_config_path, f"data.shards={self.path('shards')}", f"data.clip={self.path('clip')}",
                f"epochs={self.train_epochs}", f"run.name={self.run_name(seed)}", f"run.storage_path={self.path('train')}",
                f"run.log_dir={self.path('logs')}",
                *(["teacher.mode=online"] if self.clip_storage == "none" else []), *self.train_overrides,
                *([f"run.seed={seed}"] if seed is not None else [])]


def stage_corpus(cfg: MainConfig) -> None:
    fs, _ = filesystem(cfg.path())
    marker = cfg.path("corpus", "_SUCCESS")
    if fs.exists(marker):
        for split in ("test", synth.ANY_SHAPE_TEST):  # a corpus made before these splits
            if not fs.exists(cfg.path("corpus", split, "classes.txt")):
                synth.write_labelled(cfg.path("corpus"), split, cfg.num_test, synth.TEST_SEEDS, cfg.image_size,
                                     any_shape=split == synth.ANY_SHAPE_TEST)
        log.info("corpus: already generated")
        return
    synth.write_corpus(cfg.path("corpus"), cfg.num_train, cfg.num_val, cfg.image_size, num_probe=cfg.num_probe,
                       num_test=cfg.num_test)
    fs.pipe_file(marker, b"")


def check_user_data(cfg: MainConfig) -> None:
    """Your data's paths and names, checked before any stage: a mistake is one line, nothing started."""
    if not cfg.train_images:
        return
    open_dataset("generic", cfg.eval_root)  # the layout: images/, masks/, classes.txt
    if cfg.probe_root:
        open_dataset("generic", cfg.probe_root)
    names = cfg.class_names()
    unknown = set(cfg.held_out) - set(names)
    if unknown:
        raise ConfigError(f"unseen names {sorted(unknown)} are not among your classes {names}")
    check_teacher(cfg.clip_model, cfg.clip_pretrained)


def stage_shards(cfg: MainConfig) -> dict:
    if cfg.train_images:  # any sizes: shorter side to image_size, as the embed job's canvas wants
        return shard.run(shard.ShardConfig(
            input=cfg.train_images, output=cfg.path("shards"), samples_per_shard=cfg.samples_per_shard,
            image_size=cfg.image_size, num_cpus=cfg.num_cpus))
    return shard.run(shard.ShardConfig(
        input=cfg.path("corpus", "train"), output=cfg.path("shards"), samples_per_shard=cfg.samples_per_shard,
        image_size=cfg.image_size, resize_mode="none", num_cpus=cfg.num_cpus))


def stage_embed(cfg: MainConfig, pretrained: str) -> dict:
    fs, _ = filesystem(cfg.path())
    fs.makedirs(cfg.path(), exist_ok=True)
    seen = [c for c in cfg.class_names() if c not in cfg.held_out]
    fs.pipe_file(cfg.path("seen_classes.txt"), ("\n".join(seen) + "\n").encode())
    return embed.run(cfg.embed_config(pretrained))


def stage_train(cfg: MainConfig, seed: int | None = None) -> str:
    from trainer import train

    model_file = cfg.path("train", cfg.run_name(seed), "model.pt")
    fs, _ = filesystem(model_file)
    if fs.exists(model_file):
        log.info("train: %s exists", model_file)
        return model_file
    result = train.run(parse_config(TrainConfig, cfg.train_args(seed)))
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    return model_file


# Scored on the test split's any-outline twin: the tasks that say whether language, or texture, was learned
ANY_SHAPE_TASKS = ("language", "unseen", "probe")


def stage_evaluate(cfg: MainConfig, model_file: str, output: str, split: str = "", baselines: bool = True) -> dict:
    """The evaluation of `model_file` on the split the report scores, or on the corpus' `split` (the
    any-outline test scenes, ANY_SHAPE_TASKS only); the student's rows alone without `baselines`."""
    data_root, probe_root = (cfg.eval_root, cfg.probe_root) if cfg.train_images else \
        (cfg.path("corpus", split or ("test" if cfg.eval_split == "test" else "val")), cfg.path("corpus", "probe"))
    # unseen and class-free need held-out classes, the probe and k-NN a labelled folder of their own
    tasks = [t for t in evaluate.TASKS if (cfg.held_out or t not in ("unseen", "classfree"))
             and (probe_root or t not in ("probe", "knn")) and (not split or t in ANY_SHAPE_TASKS)]
    eval_cfg = build_config(evaluate.EvalConfig, {
        "checkpoint": model_file, "dataset": "generic", "data_root": data_root, "output": output,
        "task": "all" if len(tasks) == len(evaluate.TASKS) else ",".join(tasks), "unseen": cfg.held_out,
        "probe_root": probe_root, "num_panels": 4, "baselines": baselines, "num_cpus": cfg.num_cpus})
    fs, path = filesystem(join(output, "report.json"))
    if fs.exists(path):  # a finished run is not redone: the same model scored the same way already
        done = read_json(fs, path)
        if done.get("config") == json_safe(dataclasses.asdict(eval_cfg)):
            log.info("evaluate: %s exists", join(output, "report.json"))
            return done
    return evaluate.run(eval_cfg)


def evaluate_models(cfg: MainConfig, models: dict[int | None, str], folder: str, split: str = "") -> tuple[dict, dict]:
    """(the report, the first run's report) of `models` by seed ({None: file} for one run) on `split`: with
    seeds, a run per seed under FOLDER/sSEED and their mean and spread in FOLDER/report.json. The baselines
    are scored with the first seed's model file alone when every file is made from the same teacher,
    prototypes and architecture (their rows would be the same: two thirds of a three-seed evaluation)."""
    if None in models:
        report = stage_evaluate(cfg, models[None], cfg.path(folder), split)
        return report, report
    once = len({baselines_key(ModelSpec(file).load()) for file in models.values()}) == 1
    runs = [stage_evaluate(cfg, file, cfg.path(folder, f"s{s}"), split, baselines=not once or i == 0)
            for i, (s, file) in enumerate(models.items())]
    report = seeds_summary(runs, list(models), baselines_from=next(iter(models)) if once else None)
    fs, path = filesystem(cfg.path(folder, "report.json"))
    write_json_atomic(fs, path, json_safe(report))
    return report, runs[0]


def scored_on(cfg: MainConfig) -> str:
    if cfg.train_images:
        return f"your evaluation folder {cfg.eval_root}"
    if cfg.eval_split == "test":
        return (f"the test split (corpus/test: {cfg.num_test} scenes from a seed range of their own, which no "
                "setting was chosen on; settings were chosen on the dev split, corpus/val)")
    return f"the dev split (corpus/val: {cfg.num_val} scenes, the split settings are chosen on; not a test figure)"


def main(argv: list[str] | None = None) -> int:
    cfg = job_config(MainConfig, argv, __doc__, profiles=PROFILES)
    if cfg is None:
        return 2
    try:
        check_user_data(cfg)
        return run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(cfg: MainConfig) -> int:
    if not cfg.train_images:
        stage_corpus(cfg)
    manifest = stage_shards(cfg)
    if manifest.get("failed"):
        return 1
    pretrained, teacher_note = (cfg.clip_pretrained, f"given: {cfg.clip_model} {cfg.clip_pretrained}") \
        if cfg.clip_pretrained else ensure_teacher(cfg.teacher_recipe, cfg.path("shards"),
                                                   join(cfg.runs_root, "_teachers"), shipped=cfg.teacher == "shipped")
    if not stage_embed(cfg, pretrained)["complete"]:
        return 1
    # the generated corpus' test scenes are scored again with every outline drawn at random: a language
    # score that holds there is not one of recognising each class' shape
    splits = {"": "eval", synth.ANY_SHAPE_TEST: "eval/anyshape"} if not cfg.train_images and cfg.eval_split == "test" \
        else {"": "eval"}
    models = {s: stage_train(cfg, s) for s in cfg.seeds or (None,)}
    reports = {split: evaluate_models(cfg, models, folder, split) for split, folder in splits.items()}
    (report, first_run), first = reports[""], next(iter(models))
    per_class = (f"(seed {first})\n\n" if cfg.seeds else "") + per_class_tables(first_run)
    panels = "eval/panels" if first is None else f"eval/s{first}/panels"
    more = "" if len(reports) == 1 else (
        f"## The same test scenes, every outline drawn at random ({synth.ANY_SHAPE_TEST})\n\nEach class keeps its "
        "texture; its outline is any of the five. A language score that holds here is not shape recognition; the "
        "probe says what the pixel embeddings know of texture.\n\n" + markdown_table(reports[synth.ANY_SHAPE_TEST][0]))
    weights = parse_config(TrainConfig, cfg.train_args()).loss.weights
    path = write_report(cfg.path(), markdown_table(report), teacher_note,
                        cfg.path("logs", cfg.run_name(first), "metrics.jsonl"), weights, per_class, scored_on(cfg),
                        panels, more)
    print(open(path).read())
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
