"""What a model file yields at inference: the networks a report compares, the pixel samples that fit
clusters and probes, and the Ray Data actor that runs per-image work over rows (the per-image
compute itself is model/inference.py). pipelines/segment.py and pipelines/evaluate.py both run through it."""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import ray
import torch
from torch import nn
from tqdm import tqdm

from common.config import ConfigError
from common.ray_utils import gpus_per_actor
from formats.model_file import load_model
from formats.teacher_weights import check_teacher, load_teacher
from model.baselines import RawPixels, TeacherNet
from model.clip_teacher import Teacher, TeacherConfig
from model.inference import (
    CLASSFREE_DECISIONS,
    InferenceOptions,
    default_device,
    grid_samples,
    image_tensor,
    multiscale_outputs,
    segment_samples,
)
from model.metrics import IGNORE_INDEX
from model.network import SegNet, build_network

log = logging.getLogger(__name__)

TEACHER_ONLY = "teacher"  # --checkpoint value: the CLIP teacher (MaskCLIP) is the model itself


@dataclass(frozen=True, kw_only=True)
class ModelJobConfig:
    """The settings the evaluate and segment jobs share: how a model file runs over images and on what."""

    window: int = field(default=0, metadata={"help": "sliding-window tile in pixels; 0 = whole image"})
    scales: tuple[float, ...] = (1.0,)
    clip_model: str = field(default="", metadata={"help": "open_clip model with --checkpoint teacher"})
    clip_pretrained: str = field(default="", metadata={"help": "its weights with --checkpoint teacher ('' = random)"})
    classfree_decision: str = field(default="flat", metadata={
        "help": "class-free head: flat (one argmax over the names and the unexplained centres) or levels (known "
                "where the explained centres' share beats each unexplained centre, then the best name: fewer "
                "pixels called unknown)"})
    seed: int = 0
    num_workers: int = field(default=0, metadata={
        "help": "model actors at most; 0 = as many as the cluster grows to (one per image at most)"})
    gpus_per_actor: float = field(default=-1, metadata={
        "help": "GPUs each model actor asks for, fractions allowed; 0 = CPU actors; -1 = auto: 1 on a cluster "
                "(RAY_ADDRESS set) or when GPUs are up, else 0"})
    num_cpus: int = field(default=0, metadata={"help": "CPUs for a local Ray; 0 = all (ignored when joining)"})

    def __post_init__(self):
        if not self.scales or min(self.scales) <= 0:
            raise ConfigError(f"scales must be positive, got {self.scales}")
        if self.classfree_decision not in CLASSFREE_DECISIONS:
            raise ConfigError(f"classfree_decision must be one of {', '.join(CLASSFREE_DECISIONS)}")


# ---------------------------------------------------------------- networks


@dataclass
class Loaded:
    """What a model file provides: the student (None for the teacher alone) and its teacher's config."""

    student: SegNet | None
    meta: dict[str, Any]
    seed: int = 0

    @cached_property
    def teacher(self) -> Teacher:
        # Seeded, so a random-init teacher (tests) has the same weights in the driver and every actor.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return load_teacher(TeacherConfig(**self.meta["teacher"]))


def matched_factor(loaded: Loaded) -> int:
    """How many times finer than its own the teacher's grid is made to meet the student's (1: already
    matched, or no student); the largest divisor of the teacher's stride that does not pass the student's."""
    if loaded.student is None:
        return 1
    patch = loaded.teacher.patch_size
    return max(f for f in range(1, patch + 1) if patch % f == 0 and patch // f >= loaded.student.output_stride)


def _untrained(loaded: Loaded) -> nn.Module:
    """The student's architecture with seeded random weights everywhere: what training improved on."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(loaded.seed)
        return build_network(replace(loaded.student.cfg, backbone_weights="")).eval()


# Every network a report can compare, built from a loaded model file.
METHODS: dict[str, Callable[[Loaded], nn.Module]] = {
    "student": lambda loaded: loaded.student,
    # the dense features the student was trained on (a model file records them; MaskCLIP's before that)
    "teacher": lambda loaded: TeacherNet(loaded.teacher, loaded.meta["extra"].get("teacher_last_block", "maskclip")),
    # the same, its grid made the student's by shift-and-stitch: native vs matched resolution
    "teacher_matched": lambda loaded: TeacherNet(loaded.teacher, loaded.meta["extra"].get("teacher_last_block",
                                                                                          "maskclip"),
                                                 matched_factor(loaded)),
    "untrained": _untrained,
    "pixels": lambda loaded: RawPixels(),
}


def baselines_key(loaded: Loaded) -> str:
    """A digest of what every network of METHODS but the student is made from: the teacher, its dense-feature
    mode and prototypes (the class-free head's), the student's architecture (untrained) and the seed. Two
    model files with the same key give the same baseline rows, so a run over training seeds scores them once."""
    h = hashlib.sha256()
    _digest({"teacher": loaded.meta["teacher"], "extra": loaded.meta["extra"].get("teacher_last_block", "maskclip"),
             "prototypes": loaded.meta["prototypes"], "seed": loaded.seed,
             "student": asdict(loaded.student.cfg) if loaded.student is not None else None}, h)
    return h.hexdigest()


def _digest(value: Any, h: Any) -> None:
    if isinstance(value, torch.Tensor):
        h.update(f"tensor{value.dtype}{tuple(value.shape)}".encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(b"{")
        for key in sorted(value, key=repr):
            h.update(repr(key).encode())
            _digest(value[key], h)
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for item in value:
            _digest(item, h)
        h.update(b"]")
    else:
        h.update(repr(value).encode())


@dataclass(frozen=True)
class ModelSpec:
    """Where the networks come from: a model file (URL), or TEACHER_ONLY with an open_clip model."""

    checkpoint: str
    clip_model: str = ""
    clip_pretrained: str = ""
    seed: int = 0

    @property
    def main_method(self) -> str:
        return "teacher" if self.checkpoint == TEACHER_ONLY else "student"

    @property
    def available(self) -> tuple[str, ...]:
        return ("teacher", "pixels") if self.checkpoint == TEACHER_ONLY else tuple(METHODS)

    def load(self) -> Loaded:
        if self.checkpoint == TEACHER_ONLY:
            if not self.clip_model:
                raise ConfigError("--checkpoint teacher needs --clip-model (and --clip-pretrained)")
            check_teacher(self.clip_model, self.clip_pretrained)
            teacher = {"model": self.clip_model, "pretrained": self.clip_pretrained}
            return Loaded(None, {"teacher": teacher, "prototypes": {}, "extra": {}}, self.seed)
        if self.clip_model or self.clip_pretrained:
            log.warning("--clip-model/--clip-pretrained do nothing with a model file: it names its own teacher")
        net, meta = load_model(self.checkpoint)
        return Loaded(net, meta, self.seed)

    def build(self, methods: Iterable[str], device: str) -> dict[str, nn.Module]:
        loaded = self.load()
        return {m: METHODS[m](loaded).to(device).eval() for m in methods}


class UnreadableImage(Exception):
    """A source's image could not be read or decoded; the work skips it and the job lists it."""


def first_images(n: int, limit: int) -> range:
    """The indices of a source's first `limit` images of `n` (0 = all)."""
    return range(min(n, limit) if limit else n)


@dataclass(frozen=True)
class Draw:
    """Samples of one kind from one source's images: random grid cells, or (segments > 0) each image's own
    segments as labelled prototypes (the k-NN protocol)."""

    source: str  # a key of SampleWork.sources
    segments: int = 0


@dataclass
class SampleWork:
    """Per row {"source", "index"}: what every draw of that source takes from each network's output on image
    `index` of `sources[source]`, one forward pass for all of them.

    Returns a row per draw: {"part" (the draw's name), "index", "readable", "emb/METHOD": [n, E],
    "lab/METHOD": [n]}: clustering, probe and k-NN training data.
    """

    sources: dict[str, Any]  # name -> indexable of Sample (an EvalDataset, a FileSource)
    draws: dict[str, Draw]  # part -> what it takes
    methods: tuple[str, ...]
    num_per_image: int
    options: InferenceOptions
    seed: int = 0
    limit: int = 0  # each source's first images only; 0 = all

    def rows(self) -> list[dict[str, Any]]:
        """The rows to map: each image of every drawn source once."""
        names = sorted({d.source for d in self.draws.values()})
        return [{"source": s, "index": i} for s in names for i in first_images(len(self.sources[s]), self.limit)]

    def drawn(self, mapper: Mapper, desc: str = "fit") -> Iterator[dict[str, Any]]:
        """Every row's results through `mapper`, with a progress bar of images (a row per image and draw)."""
        rows = self.rows()
        first: dict[str, str] = {}  # each source's first draw: its row comes first, once an image
        for part, draw in sorted(self.draws.items()):
            first.setdefault(draw.source, part)
        with tqdm(total=len(rows), desc=desc, unit="img") as bar:
            for result in mapper(rows, self.methods, self):
                bar.update(int(first[self.draws[str(result["part"])].source] == str(result["part"])))
                yield result

    @torch.no_grad()
    def __call__(self, models: dict[str, nn.Module], row: dict[str, Any]) -> list[dict[str, Any]]:
        source, index = str(row["source"]), int(row["index"])
        try:
            sample = self.sources[source][index]
            image, mask, readable = sample.image, sample.mask, True
        except UnreadableImage:  # rows keep one schema: a blank image's cells, dropped by gather_samples
            image, mask, readable = np.zeros((64, 64, 3), np.uint8), np.full((64, 64), IGNORE_INDEX, np.uint8), False
        x = image_tensor(image, default_device())
        outputs = {m: multiscale_outputs(models[m], x, self.options) for m in self.methods}
        results = []
        for part, draw in sorted(self.draws.items()):
            if draw.source != source:
                continue
            result: dict[str, Any] = {"part": part, "index": index, "readable": readable}
            for m, out in outputs.items():
                # the same cells for every network of equal stride, whichever actor draws them, and
                # whichever other parts are drawn beside this one
                rng = np.random.default_rng([self.seed, index, zlib.crc32(part.encode())])
                result[f"emb/{m}"], result[f"lab/{m}"] = (
                    segment_samples(out, mask, models[m].output_stride, draw.segments, self.seed) if draw.segments
                    else grid_samples(out, mask, models[m].output_stride, self.num_per_image, rng))
            results.append(result)
        return results


def gather_samples(results: Iterable[dict[str, Any]], max_per_part: int | Mapping[str, int], seed: int = 0
                   ) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """part -> method -> (embeddings [N, E], labels [N]) from SampleWork rows, at most `max_per_part` (one
    number, or one per part; seeded)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if bool(r["readable"]):
            rows.setdefault(str(r["part"]), []).append(r)
    out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for part, items in rows.items():
        # rows come back in the order the actors finish them: in image order, the same pixels are drawn
        # (and the probe and k-means see them in the same order) however the work was spread
        items.sort(key=lambda r: int(r["index"]))
        methods = [k[4:] for k in items[0] if k.startswith("emb/")]
        out[part] = {}
        for m in methods:
            emb = torch.from_numpy(np.concatenate([r[f"emb/{m}"] for r in items]))
            lab = torch.from_numpy(np.concatenate([r[f"lab/{m}"] for r in items]).astype(np.int64))
            most = max_per_part[part] if isinstance(max_per_part, Mapping) else max_per_part
            keep = torch.randperm(len(emb), generator=torch.Generator().manual_seed(seed))[:most]
            out[part][m] = (emb[keep], lab[keep])
    return out


# ---------------------------------------------------------------- running work over rows


Work = Callable[[dict[str, nn.Module], dict[str, Any]], dict[str, Any] | list[dict[str, Any]]]


class PredictActor:
    """Ray Data actor: builds the networks once, then applies `work` to every row of each batch (a work
    may answer a row with several: a list)."""

    def __init__(self, spec: ModelSpec, methods: tuple[str, ...], work: Work):
        self.models = spec.build(methods, default_device())
        self.work = work

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        results = [out for row in rows for out in _as_rows(self.work(self.models, row))]
        return {k: _column([r[k] for r in results]) for k in results[0]}


def _as_rows(result: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return result if isinstance(result, list) else [result]


def _column(values: list[Any]) -> np.ndarray:
    # str and bytes stay Python objects: numpy's fixed-width dtypes would drop trailing zero bytes; so do
    # arrays of several shapes (a row's grid cells and its segments), which Ray keeps as ragged tensors
    if isinstance(values[0], np.ndarray) and len({v.shape for v in values}) == 1:
        return np.stack(values)
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # one by one: numpy would try to broadcast arrays of like shapes
        column[i] = value
    return column


@dataclass
class RayMapper:
    """Runs work over rows as a Ray Data job: a pool of model actors, one image a call. Not sized from the
    cluster at start (a 0-CPU head would give one actor): the pool grows from one as the cluster does,
    up to `num_workers` (0: no cap), each actor asking for `gpus` (-1: common.ray_utils.gpus_per_actor)."""

    spec: ModelSpec
    num_workers: int = 0
    gpus: float = -1

    def __call__(self, rows: list[dict[str, Any]], methods: tuple[str, ...], work: Work) -> Iterable[dict[str, Any]]:
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=min(self.num_workers, len(rows)) or len(rows))
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # an image a block: any actor takes any
        out = ds.map_batches(PredictActor, fn_constructor_kwargs={"spec": self.spec, "methods": methods, "work": work},
                             compute=pool, batch_size=1, batch_format="numpy",
                             num_gpus=gpus_per_actor(self.gpus), num_cpus=1)
        return out.iter_rows()


@dataclass
class LocalMapper:
    """Runs work in this process on networks built once; `models` may hand in ready-made ones (tests)."""

    spec: ModelSpec
    models: dict[str, nn.Module] = field(default_factory=dict)

    def __call__(self, rows: list[dict[str, Any]], methods: tuple[str, ...], work: Work) -> Iterable[dict[str, Any]]:
        missing = [m for m in methods if m not in self.models]
        if missing:
            self.models.update(self.spec.build(missing, default_device()))
        return [out for row in rows for out in _as_rows(work(self.models, row))]


Mapper = Callable[[list[dict[str, Any]], tuple[str, ...], Work], Iterable[dict[str, Any]]]
