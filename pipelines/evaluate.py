"""Benchmarks of a model file: language-driven, unsupervised, unseen-class and linear-probe segmentation, vs baselines.

    python pipelines/evaluate.py --checkpoint model.pt --dataset voc20 --data-root data/VOC2012 --task all --output eval
    python pipelines/evaluate.py --checkpoint teacher --clip-model ViT-B-16 --clip-pretrained openai \\
        --dataset context59 --data-root s3://bucket/VOC2010 --task language --output s3://bucket/eval/maskclip
    ray job submit --working-dir . -- python pipelines/evaluate.py --checkpoint s3://... --data-root s3://... ...

Writes `report.json` (per task and method: per-class IoU, mIoU, pixel accuracy, confusion matrix),
`report.md` (methods x metrics, x100) and `panels/TASK_NAME.png` (image, ground truth, predictions).
Two Ray Data passes at most, through pipelines/inference's actor: one draws pixel embeddings to fit the
clusters, the probes and the k-NN's segment prototypes, one sums per-image confusion matrices.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

# Run as a file (`python pipelines/evaluate.py`, as under `ray job submit`): this checkout's packages,
# not an installed copy of them.
if not __package__:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from common.config import ConfigError, job_config
from common.ray_utils import init_ray
from common.storage import filesystem, join, write_bytes_atomic, write_json_atomic
from formats.datasets import DATASETS, ZERO_SHOT_UNSEEN, EvalDataset, open_dataset, scored_list
from formats.prototypes import upgrade
from model.clip_teacher import text_prototypes
from model.inference import Head, InferenceOptions, fit_clusters, predict
from model.metrics import IGNORE_INDEX, confusion_matrix
from pipelines.evaluation.report import json_safe, markdown_table, panel_indices, per_class_tables, write_panels
from pipelines.evaluation.tasks import METHOD_TITLES, TASKS, train_probe
from pipelines.inference.classfree import classfree_head
from pipelines.inference.pictures import encode_png
from pipelines.inference.predict import (
    Draw,
    Loaded,
    Mapper,
    ModelJobConfig,
    ModelSpec,
    RayMapper,
    SampleWork,
    first_images,
    gather_samples,
    matched_factor,
)

log = logging.getLogger("evaluate")


@dataclass(frozen=True)
class EvalConfig(ModelJobConfig):
    checkpoint: str = field(metadata={"help": "model file (local or URL), or 'teacher' with --clip-model"})
    dataset: str = field(metadata={"help": "/".join(DATASETS)})
    data_root: str = field(metadata={"help": "the dataset's folder or prefix (generic: the split's folder)"})
    output: str = field(metadata={"help": "local folder or fsspec prefix for the report"})
    task: str = field(default="all", metadata={"help": "all, or some of " + "/".join(TASKS) + ", comma-separated"})
    split: str = "val"
    image_list: str = field(default="", metadata={
        "help": "score only the images this file names, one id a line ({split} in the path: the split's own list); "
                "cocostuff27 reads IIC's curated lists, shipped, unless you give one"})
    max_images: int = field(default=0, metadata={"help": "first N images of each split; 0 = all"})
    baselines: bool = True
    num_panels: int = 4
    unseen: tuple[str, ...] = field(default=(), metadata={"help": "unseen class names; default: the MaskCLIP+ split"})
    probe_split: str = "train"
    probe_root: str = field(default="", metadata={"help": "data root of the probe's split; default --data-root"})
    background: str = field(default="prompt", metadata={
        "help": "how a class named background is found by the language head: prompt (its name, as any class; "
                "MaskCLIP's protocol) or threshold (no prompt; where the best name's probability is below "
                "--background-threshold, as many open-vocabulary papers report VOC-21 and Context-60)"})
    background_threshold: float = field(default=0.5, metadata={
        "help": "with --background threshold: CLIP-scaled softmax probability; choose it on a dev split"})
    knn_k: int = field(default=20, metadata={"help": "k-NN task: training segments that vote (HSG's 20)"})
    knn_segments: int = field(default=16, metadata={"help": "k-NN task: segments per image (k-means of its embeddings)"})
    probe_epochs: int = 10
    probe_lr: float = 0.01
    probe_batch_size: int = 1024
    num_per_image: int = field(default=512, metadata={"help": "pixels drawn per image to fit clusters and probes"})
    max_fit_pixels: int = 200_000

    def __post_init__(self):
        super().__post_init__()
        if self.task != "all" and not set(self.tasks) <= set(TASKS):
            raise ConfigError(f"task must be all or some of {', '.join(TASKS)}, comma-separated, got {self.task!r}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        for name in ("probe_epochs", "probe_batch_size", "num_per_image", "max_fit_pixels", "knn_k", "knn_segments"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.background not in ("prompt", "threshold") or not 0 < self.background_threshold < 1:
            raise ConfigError("background must be prompt or threshold, background_threshold in (0, 1)")
        if {"unseen", "classfree"} & set(self.tasks) and not self.unseen and self.dataset not in ZERO_SHOT_UNSEEN:
            raise ConfigError(f"{self.dataset} has no built-in zero-shot split: name the unseen classes with --unseen")

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(TASKS) if self.task == "all" else tuple(t.strip() for t in self.task.split(",") if t.strip())


@dataclass
class HeadInputs:
    """What fitting a head may draw on; the text prototypes are computed once, on first use."""

    cfg: EvalConfig
    names: list[str]
    seen: np.ndarray  # [K] bool: not an unseen class
    loaded: Loaded
    samples: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]  # part -> method -> (embeddings, labels)

    @cached_property
    def prototypes(self) -> torch.Tensor:
        return text_prototypes(self.loaded.teacher, self.names)


# How each head's parameters are made for one method: the class names through the teacher's text
# encoder (prompt ensembling), k-means over drawn pixel embeddings, or a probe trained on them.
HEAD_PARAMS: dict[str, Callable[[HeadInputs, str], dict[str, torch.Tensor]]] = {
    "language": lambda inputs, m: language_params(inputs),
    "clusters": lambda inputs, m: {"centres": fit_clusters(inputs.samples["clusters"][m][0], len(inputs.names),
                                                           seed=inputs.cfg.seed)},
    "probe": lambda inputs, m: train_probe(*inputs.samples["probe"][m], len(inputs.names), inputs.cfg.probe_epochs,
                                           inputs.cfg.probe_lr, inputs.cfg.probe_batch_size, inputs.cfg.seed),
    "classfree": lambda inputs, m: classfree_params(inputs),
    "knn": lambda inputs, m: knn_params(inputs, m),
}


def language_params(inputs: HeadInputs) -> dict[str, torch.Tensor]:
    """Every class's prompt; with --background threshold, every class but the background's, and the threshold."""
    if inputs.cfg.background == "prompt":
        return {"prototypes": inputs.prototypes}
    index = background_index(inputs.names)  # run() refused a threshold without one
    keep = [i for i in range(len(inputs.names)) if i != index]
    return {"prototypes": inputs.prototypes[keep], "background": torch.tensor(index),
            "threshold": torch.tensor(inputs.cfg.background_threshold)}


def background_index(names: list[str]) -> int | None:
    """The class named background, if the dataset has one."""
    return next((i for i, n in enumerate(names) if n.lower() == "background"), None)


def knn_params(inputs: HeadInputs, method: str) -> dict[str, torch.Tensor]:
    """The training split's labelled segment prototypes (a segment no labelled pixel falls in is left out)."""
    prototypes, labels = inputs.samples["knn"][method]
    keep = labels != IGNORE_INDEX
    if not keep.any():
        raise ConfigError(f"k-NN: no labelled segment in {inputs.cfg.probe_root or inputs.cfg.data_root}")
    return {"prototypes": prototypes[keep], "labels": labels[keep], "num_classes": torch.tensor(len(inputs.names)),
            "k": torch.tensor(inputs.cfg.knn_k), "num_segments": torch.tensor(inputs.cfg.knn_segments)}


def classfree_params(inputs: HeadInputs) -> dict[str, torch.Tensor]:
    """The seen classes by name, the model's centres flagged against them; `columns` takes the head's
    ids (seen names, then unknown classes) to the confusion matrix's (dataset classes, then unknown)."""
    seen_names = [n for n, s in zip(inputs.names, inputs.seen) if s]
    head = classfree_head(inputs.loaded.teacher, inputs.loaded.meta["prototypes"], seen_names,
                          decision=inputs.cfg.classfree_decision)
    k = len(inputs.names)
    columns = np.flatnonzero(inputs.seen).tolist() + [k + j for j in range(len(head.candidates))]
    return {**head.params, "columns": torch.tensor(columns, dtype=torch.long)}


def fit_heads(cfg: EvalConfig, data: EvalDataset, seen: np.ndarray, methods: dict[str, list[str]], loaded: Loaded,
              mapper: Mapper, options: InferenceOptions) -> dict[str, Head]:
    """Every head the tasks need, keyed "HEAD/METHOD"; one pass draws what the clusters, the probe and the
    k-NN learn from."""
    wanted = {f"{TASKS[t].head}/{m}": Head(m, TASKS[t].head, {}) for t in methods for m in methods[t]}
    kinds = {h.kind for h in wanted.values()}
    # the labelled split the probe and the k-NN prototypes learn from, listed once for both
    train = open_dataset(cfg.dataset, cfg.probe_root or cfg.data_root, cfg.probe_split, cfg.image_list) \
        if kinds & {"probe", "knn"} else None
    # what each kind of head learns from, drawn in one pass: the clusters from the split being scored (they
    # see no labels), the probe from grid cells of the labelled split, the k-NN from that split's segments
    draws = {part: draw for part, draw in (("clusters", Draw("scored")), ("probe", Draw("train")),
                                           ("knn", Draw("train", cfg.knn_segments))) if part in kinds}
    samples = {}
    if draws:
        methods_drawn = tuple(sorted({h.method for h in wanted.values() if h.kind in draws}))
        work = SampleWork({"scored": data, "train": train}, draws, methods_drawn, cfg.num_per_image, options,
                          cfg.seed, cfg.max_images)
        most = {"clusters": cfg.max_fit_pixels, "probe": cfg.max_fit_pixels,
                "knn": len(train or ()) * cfg.knn_segments}  # every labelled segment: the k-NN's whole index
        samples = gather_samples(work.drawn(mapper), most, cfg.seed)
    inputs = HeadInputs(cfg, data.class_names, seen, loaded, samples)
    return {key: Head(h.method, h.kind, HEAD_PARAMS[h.kind](inputs, h.method)) for key, h in wanted.items()}


# ---------------------------------------------------------------- scoring pass


@dataclass
class ScoreWork:
    """Per row {"index"}: each head's confusion matrix [K, P] on one image (P = K, or more for a head whose
    params carry `columns`: its ids' columns), and its labels as PNG for panels."""

    data: EvalDataset
    heads: dict[str, Head]
    options: InferenceOptions
    panel_indices: frozenset[int]

    def __call__(self, models: dict[str, nn.Module], row: dict[str, Any]) -> dict[str, Any]:
        index = int(row["index"])
        sample = self.data[index]
        k = len(self.data.class_names)
        result: dict[str, Any] = {"index": np.array(index)}
        for key, labels in predict(models, self.heads, sample.image, self.options).items():
            columns = self.heads[key].params.get("columns")
            if columns is not None:
                labels = columns.numpy()[labels]
            width = max(k, int(columns.max()) + 1) if columns is not None and len(columns) else k
            result[f"conf/{key}"] = confusion_matrix(labels, sample.mask, k, num_pred=width)
            result[f"png/{key}"] = encode_png(labels) if index in self.panel_indices else b""
        return result


def score_images(results: Iterable[dict[str, Any]], keys: Iterable[str], num_classes: int
                 ) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
    """Summed confusion matrix per head, and the decoded label maps of the panel images by index."""
    totals: dict[str, np.ndarray] = {key: np.zeros((num_classes, 0), np.int64) for key in keys}
    panels: dict[int, dict[str, np.ndarray]] = {}
    for r in results:
        for key in totals:
            conf = r[f"conf/{key}"]
            totals[key] = conf if not totals[key].shape[1] else totals[key] + conf
            if len(r[f"png/{key}"]):
                panels.setdefault(int(r["index"]), {})[key] = np.asarray(Image.open(io.BytesIO(r[f"png/{key}"])))
    return totals, panels


def run(cfg: EvalConfig, mapper: Mapper | None = None) -> dict[str, Any]:
    """Evaluate every task of `cfg`; returns the report (also written to cfg.output)."""
    spec = ModelSpec(cfg.checkpoint, cfg.clip_model, cfg.clip_pretrained, cfg.seed)
    started = time.time()
    data = open_dataset(cfg.dataset, cfg.data_root, cfg.split, cfg.image_list)
    names, indices = data.class_names, first_images(len(data), cfg.max_images)
    if cfg.background == "threshold" and background_index(names) is None:  # before any cluster starts
        raise ConfigError("--background threshold needs a class named background (voc21, context60, or your own)")
    unseen = set(cfg.unseen or ZERO_SHOT_UNSEEN.get(cfg.dataset, ()))
    if {"unseen", "classfree"} & set(cfg.tasks) and not unseen <= set(names):
        raise ConfigError(f"unseen classes {sorted(unseen - set(names))} are not classes of {cfg.dataset}")
    seen = np.array([n not in unseen for n in names])
    loaded, options = spec.load(), InferenceOptions(cfg.window, cfg.scales)
    trained_on = set(loaded.meta["prototypes"].get("names", ()))
    if {"unseen", "classfree"} & set(cfg.tasks) and unseen & trained_on:
        raise ConfigError(f"{cfg.checkpoint} was trained with the names {sorted(unseen & trained_on)}: they cannot be "
                          "scored as unseen (choose other --unseen classes, or a model trained without them)")
    tasks = list(cfg.tasks)
    if "classfree" in tasks and not len(upgrade(loaded.meta["prototypes"]).get("centres", ())):
        if cfg.task != "all":
            raise ConfigError(f"{cfg.checkpoint} holds no prototypes of its teacher's features: no class-free task")
        log.info("class-free task left out: %s holds no prototypes of its teacher's features", cfg.checkpoint)
        tasks.remove("classfree")
    probe_root = cfg.probe_root or cfg.data_root
    trained = [t for t in ("probe", "knn") if t in tasks]  # tasks fitted on labels: the probe's split
    if trained and cfg.dataset == "generic" and probe_root.rstrip("/") == cfg.data_root.rstrip("/"):
        # a generic folder is one split: a probe fitted there would be scored on its own training images
        if cfg.task != "all":
            raise ConfigError(f"{cfg.data_root} is one split: the {' and '.join(trained)} would be scored on the "
                              "images they learn from; give --probe-root another labelled folder")
        log.info("%s left out: %s is one split and no --probe-root was given", " and ".join(trained), cfg.data_root)
        tasks = [t for t in tasks if t not in trained]
    if mapper is None:  # after every check: a user's mistake starts no cluster
        init_ray(cfg.num_cpus or None)
        mapper = RayMapper(spec, cfg.num_workers, cfg.gpus_per_actor)
    main_method = spec.main_method
    factor = matched_factor(loaded)  # 1: the teacher's grid is the student's already, no second row
    methods = {t: [main_method] + [b for b in TASKS[t].baselines if cfg.baselines and b in spec.available
                                   and b != main_method and (b != "teacher_matched" or factor > 1)] for t in tasks}
    heads = fit_heads(cfg, data, seen, methods, loaded, mapper, options)
    work = ScoreWork(data, heads, options, panel_indices(len(indices), cfg.num_panels))
    all_methods = tuple(sorted({h.method for h in heads.values()}))
    scored = tqdm(mapper([{"index": i} for i in indices], all_methods, work), total=len(indices), desc="score",
                  unit="img")
    totals, panel_labels = score_images(scored, heads, len(names))
    results = {t: {m: TASKS[t].score(totals[f"{TASKS[t].head}/{m}"], names, seen) for m in methods[t]}
               for t in methods}
    report = json_safe({
        "checkpoint": cfg.checkpoint, "dataset": cfg.dataset, "split": cfg.split, "num_images": len(indices),
        "class_names": names, "config": dataclasses.asdict(cfg),
        "background": {"mode": cfg.background, **({"threshold": cfg.background_threshold}
                                                   if cfg.background == "threshold" else {})}
        if background_index(names) is not None else None,
        "teacher": {**loaded.meta["teacher"], "random_init": not loaded.meta["teacher"].get("pretrained"),
                    "matched_factor": factor},
        "network": dataclasses.asdict(loaded.student.cfg) if loaded.student is not None else None,
        "methods": {m: METHOD_TITLES[m] for m in all_methods}, "tasks": results,
        "image_list": data.image_list or None,
        "probe": {"root": probe_root, "split": "the folder" if cfg.dataset == "generic" else cfg.probe_split,
                  "image_list": scored_list(DATASETS[cfg.dataset], cfg.probe_split, cfg.image_list) or None}
        if {"probe", "knn"} & set(methods) else None,
        "seconds": time.time() - started,
    })
    fs, root = filesystem(cfg.output)
    fs.makedirs(root, exist_ok=True)
    write_json_atomic(fs, join(root, "report.json"), report)
    table = markdown_table(report)
    write_bytes_atomic(fs, join(root, "report.md"), (table + "\n" + per_class_tables(report)).encode())
    write_panels(cfg.output, data, panel_labels, methods, results)
    print(table)
    return report


def main(argv: list[str] | None = None) -> int:
    cfg = job_config(EvalConfig, argv, __doc__)
    if cfg is None:
        return 2
    try:
        run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
