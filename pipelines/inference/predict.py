"""What a model file yields at inference: the networks a report compares, per-image label maps from
heads (language, class-free, clusters, probe), and the Ray Data actor that runs them over rows.
pipelines/segment.py and pipelines/evaluate.py both run through it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import ray
import torch
import torch.nn.functional as F
from torch import nn

from formats.model_file import load_model
from formats.teacher_weights import load_teacher
from model.clip_teacher import Teacher, TeacherConfig, dense_features
from model.inference import classfree_labels, cluster_labels, dense_outputs, language_labels, upsample_labels
from model.network import ModelOutput, SegNet, build_network
from common.config import ConfigError
from model.metrics import IGNORE_INDEX
from common.ray_utils import cluster_cpus


log = logging.getLogger("predict")

TEACHER_ONLY = "teacher"  # --checkpoint value: the CLIP teacher (MaskCLIP) is the model itself


# ---------------------------------------------------------------- networks


class TeacherNet(nn.Module):
    """The CLIP teacher as a dense network: images [B, 3, H, W] in [0, 1] -> ModelOutput at 1/patch.

    Its embeddings are the normalised dense CLIP features, so every task can run on it.
    """

    def __init__(self, teacher: Teacher):
        super().__init__()
        self.model = teacher.model
        self.output_stride = teacher.patch_size
        self.register_buffer("mean", torch.tensor(teacher.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(teacher.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        dense = dense_features(self.model, (images - self.mean) / self.std)
        return ModelOutput(F.normalize(dense, dim=1), dense)


class RawPixels(nn.Module):
    """Colour as the pixel embedding, the floor for unsupervised segmentation: [B, 3, H, W] -> [B, 4, H, W].

    Spherical k-means compares directions only. Colour minus 0.5 with a constant fourth channel
    keeps black, grey and white apart on the sphere (plain normalised RGB would merge every
    shade of one hue), so clustering these vectors behaves like k-means on colour. No CLIP space.
    """

    output_stride = 1

    def forward(self, images: torch.Tensor) -> ModelOutput:
        x = torch.cat([images - 0.5, torch.full_like(images[:, :1], 0.5)], dim=1)
        return ModelOutput(F.normalize(x, dim=1), x[:, :0])


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


def _untrained(loaded: Loaded) -> nn.Module:
    """The student's architecture with seeded random weights everywhere: what training improved on."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(loaded.seed)
        return build_network(replace(loaded.student.cfg, backbone_weights="")).eval()


# Every network a report can compare, built from a loaded model file.
METHODS: dict[str, Callable[[Loaded], nn.Module]] = {
    "student": lambda loaded: loaded.student,
    "teacher": lambda loaded: TeacherNet(loaded.teacher),
    "untrained": _untrained,
    "pixels": lambda loaded: RawPixels(),
}


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
            teacher = {"model": self.clip_model, "pretrained": self.clip_pretrained}
            return Loaded(None, {"teacher": teacher, "prototypes": {}, "extra": {}}, self.seed)
        if self.clip_model or self.clip_pretrained:
            log.warning("--clip-model/--clip-pretrained do nothing with a model file: it names its own teacher")
        net, meta = load_model(self.checkpoint)
        return Loaded(net, meta, self.seed)

    def build(self, methods: Iterable[str], device: str) -> dict[str, nn.Module]:
        loaded = self.load()
        return {m: METHODS[m](loaded).to(device).eval() for m in methods}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- per-image compute


@dataclass(frozen=True)
class InferenceOptions:
    window: int = 0  # sliding-window tile in pixels (rounded down to each network's stride); 0 = whole image
    scales: tuple[float, ...] = (1.0,)


def multiscale_outputs(net: nn.Module, images: torch.Tensor, options: InferenceOptions) -> ModelOutput:
    """Mean of the outputs over `options.scales` on the grid of scale 1: [B, ., ceil(H/s), ceil(W/s)]."""
    s = net.output_stride
    window = max(s, options.window // s * s) if options.window > 0 else 0
    grid = (-(-images.shape[-2] // s), -(-images.shape[-1] // s))
    embeddings, clip = 0, 0
    for scale in options.scales:
        x = images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        out = dense_outputs(net, x, window)
        if out.embeddings.shape[-2:] != grid:
            out = ModelOutput(*(_resize(t, grid) for t in out))
        embeddings, clip = embeddings + out.embeddings, clip + out.clip
    return ModelOutput(F.normalize(embeddings, dim=1), clip / len(options.scales))


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if t.shape[1] == 0:  # a network without a CLIP space (RawPixels): nothing to interpolate
        return t.new_zeros(*t.shape[:2], *size)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def image_tensor(image: np.ndarray, device: str) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [0, 1]."""
    return torch.tensor(image, device=device).permute(2, 0, 1)[None].float().div(255)


def _probe_labels(out: ModelOutput, params: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    logits = torch.einsum("behw,ke->bkhw", out.embeddings, params["weight"]) + params["bias"].view(1, -1, 1, 1)
    return upsample_labels(logits, size)


# How a head turns one network's outputs into labels [B, H, W]: (outputs, params, size) -> labels.
HEADS: dict[str, Callable[[ModelOutput, dict[str, torch.Tensor], tuple[int, int]], torch.Tensor]] = {
    "language": lambda out, p, size: language_labels(out, p["prototypes"], size),
    "classfree": lambda out, p, size: classfree_labels(out, p["known"], p["unknown"], size),
    "clusters": lambda out, p, size: cluster_labels(out, p["centres"], size),
    "probe": _probe_labels,
}


@dataclass(frozen=True)
class Head:
    """One labelling of one network: `kind` is a key of HEADS, `params` its tensors (prototypes, centres...)."""

    method: str
    kind: str
    params: dict[str, torch.Tensor]


@torch.no_grad()
def predict(models: dict[str, nn.Module], heads: dict[str, Head], image: np.ndarray, options: InferenceOptions
            ) -> dict[str, np.ndarray]:
    """Label map int64 [H, W] per head for one uint8 [H, W, 3] image; each network runs once."""
    x = image_tensor(image, default_device())
    outs = {m: multiscale_outputs(models[m], x, options) for m in {h.method for h in heads.values()}}
    labels = {}
    for key, head in heads.items():
        out, s = outs[head.method], models[head.method].output_stride
        params = {k: v.to(x.device) for k, v in head.params.items()}
        # label the padded grid's full extent, then crop: the grid covers the padding too
        padded = HEADS[head.kind](out, params, (out.embeddings.shape[-2] * s, out.embeddings.shape[-1] * s))
        labels[key] = padded[0, : image.shape[0], : image.shape[1]].cpu().numpy()
    return labels


def grid_samples(out: ModelOutput, mask: np.ndarray, stride: int, num: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`num` grid cells drawn at random: embeddings float32 [num, E] and the mask label at each cell centre [num]."""
    e, h, w = out.embeddings.shape[1:]
    padded = np.pad(mask, ((0, h * stride - mask.shape[0]), (0, w * stride - mask.shape[1])),
                    constant_values=IGNORE_INDEX)
    labels = padded[stride // 2 :: stride, stride // 2 :: stride].reshape(-1)
    # a fixed count per image keeps the rows stackable; small grids are drawn with replacement
    cells = rng.choice(h * w, num, replace=h * w < num)
    embeddings = out.embeddings[0].reshape(e, -1)[:, torch.from_numpy(cells).to(out.embeddings.device)]
    return embeddings.T.float().cpu().numpy(), labels[cells]


@dataclass
class SampleWork:
    """Per row {"part", "index"}: random grid cells of each network on image `index` of `sources[part]`.

    Returns {"part", "emb/METHOD": [n, E], "lab/METHOD": [n]}: clustering and probe training data.
    """

    sources: dict[str, Any]  # part -> indexable of Sample (an EvalDataset, a FileSource)
    methods: tuple[str, ...]
    num_per_image: int
    options: InferenceOptions
    seed: int = 0

    @torch.no_grad()
    def __call__(self, models: dict[str, nn.Module], row: dict[str, Any]) -> dict[str, Any]:
        part, index = str(row["part"]), int(row["index"])
        sample = self.sources[part][index]
        x = image_tensor(sample.image, default_device())
        result: dict[str, Any] = {"part": part}
        for m in self.methods:
            # the same cells for every network of equal stride, whichever actor draws them
            rng = np.random.default_rng([self.seed, index, sorted(self.sources).index(part)])
            out = multiscale_outputs(models[m], x, self.options)
            result[f"emb/{m}"], result[f"lab/{m}"] = grid_samples(out, sample.mask, models[m].output_stride,
                                                                  self.num_per_image, rng)
        return result


def gather_samples(results: Iterable[dict[str, Any]], max_per_part: int, seed: int = 0
                   ) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """part -> method -> (embeddings [N, E], labels [N]) from SampleWork rows, at most `max_per_part` (seeded)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        rows.setdefault(str(r["part"]), []).append(r)
    out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for part, items in rows.items():
        methods = [k[4:] for k in items[0] if k.startswith("emb/")]
        out[part] = {}
        for m in methods:
            emb = torch.from_numpy(np.concatenate([r[f"emb/{m}"] for r in items]))
            lab = torch.from_numpy(np.concatenate([r[f"lab/{m}"] for r in items]).astype(np.int64))
            keep = torch.randperm(len(emb), generator=torch.Generator().manual_seed(seed))[:max_per_part]
            out[part][m] = (emb[keep], lab[keep])
    return out


# ---------------------------------------------------------------- running work over rows


Work = Callable[[dict[str, nn.Module], dict[str, Any]], dict[str, Any]]


class PredictActor:
    """Ray Data actor: builds the networks once, then applies `work` to every row of each batch."""

    def __init__(self, spec: ModelSpec, methods: tuple[str, ...], work: Work):
        self.models = spec.build(methods, default_device())
        self.work = work

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        results = [self.work(self.models, row) for row in rows]
        return {k: _column([r[k] for r in results]) for k in results[0]}


def _column(values: list[Any]) -> np.ndarray:
    # str and bytes stay Python objects: numpy's fixed-width dtypes would drop trailing zero bytes
    return np.stack(values) if isinstance(values[0], np.ndarray) else np.array(values, dtype=object)


@dataclass
class RayMapper:
    """Runs work over rows as a Ray Data job: an actor pool, one actor per GPU (or CPU), one image a call."""

    spec: ModelSpec
    num_workers: int = 0  # 0 = one per GPU, or per CPU without GPUs

    def __call__(self, rows: list[dict[str, Any]], methods: tuple[str, ...], work: Work) -> Iterable[dict[str, Any]]:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        size = min(len(rows), self.num_workers or gpus or cluster_cpus())
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 4 * size))
        out = ds.map_batches(PredictActor, fn_constructor_kwargs={"spec": self.spec, "methods": methods, "work": work},
                             compute=ray.data.ActorPoolStrategy(size=size), batch_size=1, batch_format="numpy",
                             num_gpus=1 if gpus else 0, num_cpus=1)
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
        return [work(self.models, row) for row in rows]


Mapper = Callable[[list[dict[str, Any]], tuple[str, ...], Work], Iterable[dict[str, Any]]]
