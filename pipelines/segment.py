"""The segment job: a model file applied to images, a label PNG and a colour overlay per image.

    python pipelines/segment.py --checkpoint model.pt --images 'photos/*.jpg' --prompts cat,grass,sky --output out
    python pipelines/segment.py --checkpoint model.pt --images s3://bucket/photos --unsupervised 8 --output out
    ray job submit --working-dir . -- python pipelines/segment.py --checkpoint s3://... --images s3://... ...

Writes `NAME_labels.png` (class index per pixel) and `NAME_overlay.png` (colours over the image,
with a legend) per image: the heads of model/inference.py run by the actor of pipelines/inference/, which
pipelines/evaluate.py uses too.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Run as a file (`python pipelines/segment.py`, as under `ray job submit`): this checkout's packages,
# not an installed copy of them.
if not __package__:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from tqdm import tqdm

from common.config import ConfigError, job_config
from common.ray_utils import init_ray
from common.storage import filesystem, join, write_bytes_atomic, write_json_atomic
from formats.datasets import Sample
from formats.images import INPUT_EXTENSIONS
from formats.prototypes import upgrade
from model.clip_teacher import text_prototypes
from model.inference import Head, InferenceOptions, fit_clusters, predict
from model.metrics import IGNORE_INDEX
from pipelines.inference.classfree import classfree_head
from pipelines.inference.pictures import compose, encode_png, overlay_image
from pipelines.inference.predict import (
    Draw,
    Loaded,
    Mapper,
    ModelJobConfig,
    ModelSpec,
    RayMapper,
    SampleWork,
    UnreadableImage,
    gather_samples,
)

log = logging.getLogger("segment")
LABELS = "labels.json"  # label index -> class name, for every NAME_labels.png
UNREADABLE = "unreadable.json"  # image name -> why it was skipped

# ---------------------------------------------------------------- the segment job


def list_images(location: str) -> list[str]:
    """URLs of the images at a file, a folder or prefix (searched recursively) or a glob; sorted."""
    fs, path = filesystem(location)
    if any(c in path for c in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = fs.find(path)
    else:
        found = [path]
    urls = sorted(fs.unstrip_protocol(p) for p in found if p.lower().endswith(INPUT_EXTENSIONS))
    if not urls:
        raise ConfigError(f"no images ({', '.join(INPUT_EXTENSIONS)}) at {location}")
    return urls


def _stem(url: str) -> str:
    return url.rsplit("/", 1)[-1].rsplit(".", 1)[0]


@dataclass
class FileSource:
    """Image files by URL, without ground truth: every mask pixel is IGNORE_INDEX."""

    urls: list[str]

    def __post_init__(self):
        stems = [_stem(u) for u in self.urls]
        if len(set(stems)) != len(stems):
            twice = sorted({s for s in stems if stems.count(s) > 1})[0]
            raise ConfigError(f"two images are named {twice}: outputs are named after the file, give them other names")

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, index: int) -> Sample:
        fs, path = filesystem(self.urls[index])
        try:
            with Image.open(io.BytesIO(fs.cat_file(path))) as img:
                # upright as a viewer shows it (the shard job applies EXIF orientation too)
                image = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # truncated, empty, not an image
            raise UnreadableImage(f"{type(e).__name__}: {e}") from None
        return Sample(_stem(path), image, np.full(image.shape[:2], IGNORE_INDEX, np.uint8))


@dataclass
class SegmentWork:
    """Per row {"index"}: NAME_labels.png and NAME_overlay.png of one image, written under `output`."""

    source: FileSource
    head: Head
    names: list[str]
    output: str
    options: InferenceOptions

    def __call__(self, models: dict[str, nn.Module], row: dict[str, Any]) -> dict[str, Any]:
        index = int(row["index"])
        try:
            sample = self.source[index]
        except UnreadableImage as e:
            return {"name": _stem(self.source.urls[index]), "error": str(e)}
        labels = predict(models, {"labels": self.head}, sample.image, self.options)["labels"]
        picture = compose([("", overlay_image(sample.image, labels))], self.names, np.unique(labels))
        fs, root = filesystem(self.output)
        write_bytes_atomic(fs, join(root, f"{sample.name}_labels.png"), encode_png(labels))
        write_bytes_atomic(fs, join(root, f"{sample.name}_overlay.png"), encode_png(picture))
        return {"name": sample.name, "error": ""}


@dataclass(frozen=True)
class SegmentConfig(ModelJobConfig):
    checkpoint: str = field(metadata={"help": "model file (local or URL), or 'teacher' with --clip-model"})
    images: str = field(metadata={"help": "an image, a folder or prefix (s3://...), or a glob"})
    output: str = field(metadata={"help": "local folder or fsspec prefix for the PNGs"})
    prompts: tuple[str, ...] = field(default=(), metadata={"help": "class names, comma-separated"})
    unsupervised: int = field(default=0, metadata={"help": "K: cluster pixel embeddings into K segments"})
    classfree: bool = field(default=False, metadata={
        "help": "known classes by name (--prompts, default the training names), the rest by the model's unknown "
                "prototypes"})
    vocabulary: tuple[str, ...] = field(default=(), metadata={
        "help": "with --classfree: names, comma-separated, to name each unknown class by its nearest"})
    num_per_image: int = field(default=512, metadata={"help": "pixels drawn per image to fit the clusters"})
    max_fit_pixels: int = 100_000

    def __post_init__(self):
        super().__post_init__()
        if self.unsupervised < 0 or (self.unsupervised and (self.prompts or self.classfree)):
            raise ConfigError("choose either --unsupervised K (K > 0) or --prompts/--classfree")
        if not (self.unsupervised or self.prompts or self.classfree):
            raise ConfigError("say what to segment: --prompts a,b,c, --classfree or --unsupervised K")
        if self.vocabulary and not self.classfree:
            raise ConfigError("--vocabulary names the unknown classes of --classfree: add --classfree")

    @property
    def mode(self) -> str:
        return "unsupervised" if self.unsupervised else "classfree" if self.classfree else "prompts"


def _prompt_head(cfg: SegmentConfig, loaded: Loaded, method: str, fit: Callable) -> tuple[Head, list[str]]:
    names = list(cfg.prompts)
    return Head(method, "language", {"prototypes": text_prototypes(loaded.teacher, names)}), names


def _classfree_head(cfg: SegmentConfig, loaded: Loaded, method: str, fit: Callable) -> tuple[Head, list[str]]:
    protos = upgrade(loaded.meta["prototypes"])
    if len(protos["centres"]) == 0:
        raise ConfigError(f"{cfg.checkpoint} holds no prototypes of its teacher's features for --classfree")
    names = list(cfg.prompts) or list(protos["names"])  # default: the names the model was trained with
    head = classfree_head(loaded.teacher, protos, names, list(cfg.vocabulary), cfg.classfree_decision)
    for i, candidates in enumerate(head.candidates):
        if candidates:
            log.info("unknown-%d: nearest in the vocabulary %s", i, ", ".join(candidates))
    return Head(method, "classfree", head.params), head.names


def _cluster_head(cfg: SegmentConfig, loaded: Loaded, method: str, fit: Callable) -> tuple[Head, list[str]]:
    embeddings, _ = fit()[method]
    centres = fit_clusters(embeddings, cfg.unsupervised, seed=cfg.seed)
    return Head(method, "clusters", {"centres": centres}), [f"cluster-{i}" for i in range(cfg.unsupervised)]


# How each mode labels pixels: (config, loaded model, method, fit() -> samples by method) -> (head, names).
MODES = {"prompts": _prompt_head, "classfree": _classfree_head, "unsupervised": _cluster_head}


def run(cfg: SegmentConfig, mapper: Mapper | None = None) -> list[str]:
    """Label every readable image; returns the names written. `mapper` defaults to a Ray Data job.

    The images are listed and the model loaded before Ray starts: a wrong path is one line."""
    spec = ModelSpec(cfg.checkpoint, cfg.clip_model, cfg.clip_pretrained, cfg.seed)
    source = FileSource(list_images(cfg.images))
    loaded, method = spec.load(), spec.main_method  # on the driver: text prompts and stored prototypes
    if mapper is None:
        init_ray(cfg.num_cpus or None)
        mapper = RayMapper(spec, cfg.num_workers, cfg.gpus_per_actor)
    options = InferenceOptions(cfg.window, cfg.scales)

    def fit() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        work = SampleWork({"images": source}, {"images": Draw("images")}, (method,), cfg.num_per_image, options,
                          cfg.seed)
        fitted = gather_samples(work.drawn(mapper), cfg.max_fit_pixels, cfg.seed)
        if "images" not in fitted:
            raise ConfigError(f"none of the {len(source)} images at {cfg.images} could be read")
        return fitted["images"]

    head, names = MODES[cfg.mode](cfg, loaded, method, fit)
    fs, root = filesystem(cfg.output)
    fs.makedirs(root, exist_ok=True)
    write_json_atomic(fs, join(root, LABELS), {"mode": cfg.mode, "classes": dict(enumerate(names))})
    started = time.time()
    work = SegmentWork(source, head, names, cfg.output, options)
    rows = [{"index": i} for i in range(len(source))]
    results = list(tqdm(mapper(rows, (method,), work), total=len(rows), desc="segment", unit="img"))
    written = [str(r["name"]) for r in results if not r["error"]]
    unreadable = {str(r["name"]): str(r["error"]) for r in results if r["error"]}
    if unreadable:
        write_json_atomic(fs, join(root, UNREADABLE), unreadable)
    print(f"segmented {len(written)} images into {len(names)} classes ({cfg.mode}) in "
          f"{time.time() - started:.1f} s -> {cfg.output} (label index -> class: {LABELS})")
    for name, error in sorted(unreadable.items()):
        print(f"  skipped {name}: {error}")
    if unreadable:
        print(f"{len(unreadable)} unreadable images skipped, listed in {UNREADABLE}")
    return written


def main(argv: list[str] | None = None) -> int:
    cfg = job_config(SegmentConfig, argv, __doc__)
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
