"""Applying a model file to images: the networks it yields, per-image label maps, colour overlays, and the segment job.

    python pipelines/segment.py --checkpoint model.pt --images 'photos/*.jpg' --prompts cat,grass,sky --output out
    python pipelines/segment.py --checkpoint model.pt --images s3://bucket/photos --unsupervised 8 --output out
    ray job submit --working-dir . -- python pipelines/segment.py --checkpoint s3://... --images s3://... ...

Writes `NAME_labels.png` (class index per pixel) and `NAME_overlay.png` (colours over the image,
with a legend) per image. pipelines/evaluate.py runs its benchmarks through the same networks,
heads, per-row work and Ray actor (`RayMapper`).
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import ray
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from model.checkpoint import load_model
from model.clip_teacher import Teacher, TeacherConfig, dense_features, load_teacher, text_prototypes
from model.inference import (classfree_labels, classfree_names, cluster_labels, dense_outputs, fit_clusters,
                             language_labels, upsample_labels)
from model.network import ModelOutput, SegNet, build_network
from pipelines.config import ConfigError, parse_config
from pipelines.datasets import IGNORE_INDEX, Sample
from pipelines.ray_utils import cluster_cpus, init_ray
from pipelines.sources import IMAGE_EXTENSIONS
from pipelines.storage import filesystem, join, write_bytes_atomic

log = logging.getLogger("segment")

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


# ---------------------------------------------------------------- pictures


def palette(n: int = 256) -> np.ndarray:
    """uint8 [n, 3]: the PASCAL VOC colour map (the index's bits spread over R, G, B)."""
    ids, colours = np.arange(n), np.zeros((n, 3), np.int64)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.astype(np.uint8)


# Class i takes VOC colour i + 1, so no class is black over a dark image; IGNORE_INDEX is black.
CLASS_COLOURS = np.roll(palette(), -1, axis=0)


def colorize(labels: np.ndarray) -> np.ndarray:
    """Class ids [H, W] -> uint8 [H, W, 3] in CLASS_COLOURS."""
    return CLASS_COLOURS[np.asarray(labels, dtype=np.int64) % 256]


def overlay_image(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The class colours blended over the image; ignored pixels keep the image."""
    blended = (1 - alpha) * image + alpha * colorize(labels).astype(np.float32)
    blended = np.where((np.asarray(labels) == IGNORE_INDEX)[..., None], image, blended)
    return blended.round().astype(np.uint8)


def compose(tiles: list[tuple[str, np.ndarray]], names: list[str], present: Iterable[int]) -> np.ndarray:
    """Titled RGB tiles side by side and a legend of the `present` class ids: uint8 [H', W', 3]."""
    font, line = ImageFont.load_default(), 14
    ids = sorted({int(i) for i in present})
    entries = [(names[i] if i < len(names) else "ignore" if i == IGNORE_INDEX else str(i), i) for i in ids]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_w = 24 + max((int(probe.textlength(t, font=font)) for t, _ in entries), default=0)
    steps = [max(t.shape[1], int(probe.textlength(title, font=font))) + 6 for title, t in tiles]
    height = max(line + max(t.shape[0] for _, t in tiles), line * (len(entries) + 1))
    canvas = Image.new("RGB", (sum(steps) + legend_w, height), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for (title, tile), step in zip(tiles, steps):
        draw.text((x, 1), title, fill="black", font=font)
        canvas.paste(Image.fromarray(tile), (x, line))
        x += step
    for row, (text, i) in enumerate(entries):
        y = line * (row + 1)
        draw.rectangle((x, y + 1, x + 12, y + 12), fill=tuple(int(c) for c in CLASS_COLOURS[i % 256]), outline="black")
        draw.text((x + 18, y), text, fill="black", font=font)
    return np.asarray(canvas)


def encode_png(array: np.ndarray) -> bytes:
    """A PNG of an RGB image or a label map (8-bit up to 255 classes, else 16-bit)."""
    if array.ndim == 2:
        array = array.astype(np.uint8 if array.max(initial=0) < 256 else np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


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
    urls = sorted(fs.unstrip_protocol(p) for p in found if p.lower().endswith(IMAGE_EXTENSIONS))
    if not urls:
        raise FileNotFoundError(f"no images ending in {IMAGE_EXTENSIONS} at {location}")
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
            raise ValueError("two images share a file name; outputs are named after it")

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, index: int) -> Sample:
        fs, path = filesystem(self.urls[index])
        with Image.open(io.BytesIO(fs.cat_file(path))) as img:
            image = np.asarray(img.convert("RGB"))
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
        sample = self.source[int(row["index"])]
        labels = predict(models, {"labels": self.head}, sample.image, self.options)["labels"]
        picture = compose([("", overlay_image(sample.image, labels))], self.names, np.unique(labels))
        fs, root = filesystem(self.output)
        write_bytes_atomic(fs, join(root, f"{sample.name}_labels.png"), encode_png(labels))
        write_bytes_atomic(fs, join(root, f"{sample.name}_overlay.png"), encode_png(picture))
        return {"name": sample.name}


@dataclass
class SegmentConfig:
    checkpoint: str = field(metadata={"help": "model file (local or URL), or 'teacher' with --clip-model"})
    images: str = field(metadata={"help": "an image, a folder or prefix (s3://...), or a glob"})
    output: str = field(metadata={"help": "local folder or fsspec prefix for the PNGs"})
    prompts: tuple[str, ...] = field(default=(), metadata={"help": "class names, comma-separated"})
    unsupervised: int = field(default=0, metadata={"help": "K: cluster pixel embeddings into K segments"})
    classfree: bool = field(default=False, metadata={"help": "prompts plus the model's unknown prototypes"})
    window: int = field(default=0, metadata={"help": "sliding-window tile in pixels; 0 = whole image"})
    scales: tuple[float, ...] = (1.0,)
    clip_model: str = field(default="", metadata={"help": "open_clip model with --checkpoint teacher"})
    clip_pretrained: str = field(default="", metadata={"help": "its weights with --checkpoint teacher ('' = random)"})
    num_per_image: int = field(default=512, metadata={"help": "pixels drawn per image to fit the clusters"})
    max_fit_pixels: int = 100_000
    seed: int = 0
    num_workers: int = field(default=0, metadata={"help": "actors; 0 = one per GPU, or per CPU"})
    num_cpus: int = field(default=0, metadata={"help": "CPUs for a local Ray; 0 = all (ignored when joining)"})

    def __post_init__(self):
        if self.unsupervised < 0 or (self.unsupervised and (self.prompts or self.classfree)):
            raise ConfigError("choose either --unsupervised K (K > 0) or --prompts/--classfree")
        if not (self.unsupervised or self.prompts or self.classfree):
            raise ConfigError("say what to segment: --prompts a,b,c, --classfree or --unsupervised K")

    @property
    def mode(self) -> str:
        return "unsupervised" if self.unsupervised else "classfree" if self.classfree else "prompts"


def _prompt_head(cfg: SegmentConfig, loaded: Loaded, method: str, fit: Callable) -> tuple[Head, list[str]]:
    names = list(cfg.prompts)
    return Head(method, "language", {"prototypes": text_prototypes(loaded.teacher, names)}), names


def _classfree_head(cfg: SegmentConfig, loaded: Loaded, method: str, fit: Callable) -> tuple[Head, list[str]]:
    protos = loaded.meta["prototypes"]
    if len(protos.get("unknown", ())) == 0:
        raise ConfigError(f"{cfg.checkpoint} holds no unknown prototypes for --classfree")
    names = list(cfg.prompts) or list(protos["names"])  # default: the names the model was trained with
    params = {"known": text_prototypes(loaded.teacher, names), "unknown": protos["unknown"]}
    return Head(method, "classfree", params), classfree_names(names, len(protos["unknown"]))


def _cluster_head(cfg: SegmentConfig, loaded: Loaded, method: str, fit: Callable) -> tuple[Head, list[str]]:
    embeddings, _ = fit()[method]
    centres = fit_clusters(embeddings, cfg.unsupervised, seed=cfg.seed)
    return Head(method, "clusters", {"centres": centres}), [f"cluster-{i}" for i in range(cfg.unsupervised)]


# How each mode labels pixels: (config, loaded model, method, fit() -> samples by method) -> (head, names).
MODES = {"prompts": _prompt_head, "classfree": _classfree_head, "unsupervised": _cluster_head}


def run(cfg: SegmentConfig, mapper: Mapper | None = None) -> list[str]:
    """Label every image; returns the names written. `mapper` defaults to a Ray Data job."""
    spec = ModelSpec(cfg.checkpoint, cfg.clip_model, cfg.clip_pretrained, cfg.seed)
    if mapper is None:
        init_ray(cfg.num_cpus or None)
        mapper = RayMapper(spec, cfg.num_workers)
    source = FileSource(list_images(cfg.images))
    loaded, method = spec.load(), spec.main_method  # on the driver: text prompts and stored prototypes
    options = InferenceOptions(cfg.window, cfg.scales)

    def fit() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        work = SampleWork({"images": source}, (method,), cfg.num_per_image, options, cfg.seed)
        rows = [{"part": "images", "index": i} for i in range(len(source))]
        return gather_samples(mapper(rows, (method,), work), cfg.max_fit_pixels, cfg.seed)["images"]

    head, names = MODES[cfg.mode](cfg, loaded, method, fit)
    fs, root = filesystem(cfg.output)
    fs.makedirs(root, exist_ok=True)
    started = time.time()
    work = SegmentWork(source, head, names, cfg.output, options)
    written = [str(r["name"]) for r in mapper([{"index": i} for i in range(len(source))], (method,), work)]
    print(f"segmented {len(written)} images into {len(names)} classes ({cfg.mode}) in "
          f"{time.time() - started:.1f} s -> {cfg.output}")
    return written


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = parse_config(SegmentConfig, argv, description=__doc__.split("\n")[0])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
