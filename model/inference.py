"""Using a trained network: dense outputs for images of any size (tiled, multi-scale), and label maps from
heads (text-driven, class-free, clusters, linear probe) for one image or a batch.

Pure torch: pipelines/evaluate.py and pipelines/segment.py run these inside their Ray actors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.kmeans import spherical_kmeans
from model.metrics import IGNORE_INDEX
from model.network import ModelOutput, SegNet
from model.prototypes import SemanticTargets, cosine_logits, semantic_log_probs


def _pad_to(images: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    return F.pad(images, (0, -w % multiple, 0, -h % multiple), mode="replicate")


@torch.no_grad()
def dense_outputs(net: SegNet, images: torch.Tensor, window: int = 0, overlap: float = 1 / 3) -> ModelOutput:
    """The network's outputs on the grid of the whole image, [B, 3, H, W] in [0, 1] -> [B, ., ceil(H/s), ceil(W/s)].

    window > 0 runs square tiles of that many pixels (a multiple of the stride) overlapping by
    `overlap` and averages them where they meet, so memory stays bounded for large images.
    """
    s = net.output_stride
    padded = _pad_to(images, s)
    if window <= 0 or max(padded.shape[-2:]) <= window:
        return net(padded)
    if window % s:
        raise ValueError(f"window {window} must be a multiple of the output stride {s}")
    h, w = padded.shape[-2:]
    step = max(s, int(window * (1 - overlap)) // s * s)
    tops = sorted({min(t, max(h - window, 0)) for t in range(0, max(h - window, 0) + step, step)})
    lefts = sorted({min(t, max(w - window, 0)) for t in range(0, max(w - window, 0) + step, step)})
    sums, count = None, padded.new_zeros(1, 1, h // s, w // s)
    for top in tops:
        for left in lefts:
            tile = net(padded[..., top:top + window, left:left + window])
            if sums is None:
                sums = [padded.new_zeros(*t.shape[:2], h // s, w // s) for t in tile]
            rows, cols = slice(top // s, top // s + tile[0].shape[-2]), slice(left // s, left // s + tile[0].shape[-1])
            for acc, t in zip(sums, tile):
                acc[..., rows, cols] += t
            count[..., rows, cols] += 1
    return ModelOutput(F.normalize(sums[0] / count, dim=1), sums[1] / count)


def upsample_labels(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, h, w] scores -> [B, H, W] argmax after bilinear upsampling of the scores."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)


def language_labels(out: ModelOutput, text_prototypes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel argmax of cosine to the prompts' text embeddings [C, Dc]: [B, H, W] class ids."""
    return upsample_labels(cosine_logits(out.clip, text_prototypes), size)


# CLIP's own logit scale (100): the softmax over class names a background threshold is read against
BACKGROUND_TEMPERATURE = 0.01


def thresholded_labels(out: ModelOutput, text_prototypes: torch.Tensor, background: int, threshold: float,
                       size: tuple[int, int]) -> torch.Tensor:
    """Background by a score threshold, as open-vocabulary papers report VOC-21 and Context-60: the
    foreground names [C - 1, Dc] (all but class `background`) are prompted; a pixel is background where
    its best name's softmax probability (CLIP's scale) is below `threshold`."""
    probs = cosine_logits(out.clip, text_prototypes, BACKGROUND_TEMPERATURE).softmax(1)  # [B, C - 1, h, w]
    scores = torch.cat([probs[:, :background], torch.full_like(probs[:, :1], threshold), probs[:, background:]], 1)
    return upsample_labels(scores, size)


# The semantic term's teacher temperature in the default training config (model.objective.LossConfig):
# the class-free head splits a pixel between names and unknown prototypes as training did
CLASSFREE_TEMPERATURE = 0.03


# the first is the default: chosen on the demo's dev split (BENCHMARKS.md, "The class-free head")
CLASSFREE_DECISIONS = ("flat", "levels")


def classfree_labels(out: ModelOutput, targets: SemanticTargets, size: tuple[int, int], decision: str = "flat"
                     ) -> torch.Tensor:
    """Class-free labels from the hierarchical distribution (model.prototypes.semantic_log_probs). Ids >=
    len(known) are the unnamed classes, in the order of `targets.unknown`.

    flat: the argmax over names and centres together. The known mass is split among the names there, so
    one unexplained centre can outweigh the best name even where the explained share g is most of the
    mass: a bias toward "unknown" that grows with the number of names. levels: the hierarchy read top
    down, as its targets are built: g against each unexplained centre's mass; where g wins the pixel is
    known and takes its best name, else its unexplained centre. On the demo's dev split levels called
    fewer seen-class pixels unknown (64.5% vs 68.4% for the student) but scored a lower all-class mIoU
    (14.8 vs 15.7); the teacher's scores were within 0.1 either way."""
    if decision not in CLASSFREE_DECISIONS:
        raise ValueError(f"class-free decision {decision!r} unknown (choose from {', '.join(CLASSFREE_DECISIONS)})")
    log_probs = semantic_log_probs(out.clip, targets, CLASSFREE_TEMPERATURE)
    c = len(targets.known)
    if decision == "levels" and c:
        names = log_probs[:, :c]
        # the best name scores log g, the others keep their distance below it: the argmax picks known vs each
        # unknown centre by g, and among the names as the names' own softmax does
        names = names - names.amax(1, keepdim=True) + torch.logsumexp(names, 1, keepdim=True)
        log_probs = torch.cat([names, log_probs[:, c:]], 1)
    return upsample_labels(log_probs, size)


def classfree_names(known_names: list[str], unknown_names: list[str]) -> list[str]:
    """Legend names: the known ones, then `unknown-i`, followed by the name a test-time vocabulary gave it."""
    return list(known_names) + [f"unknown-{i}" + (f" ({name})" if name else "") for i, name in enumerate(unknown_names)]


def name_prototypes(unknown: torch.Tensor, vocabulary: torch.Tensor, top: int = 3) -> torch.Tensor:
    """For each unknown prototype [U, D], its `top` nearest vocabulary entries [V, D] by cosine: [U, top]
    indices, best first. A comparison among the vocabulary's names, so the modality gap's offset cancels."""
    cosine = F.normalize(unknown.float(), dim=-1) @ F.normalize(vocabulary.float(), dim=-1).T
    return cosine.topk(min(top, len(vocabulary)), dim=1).indices


def fit_clusters(embeddings: torch.Tensor, num_clusters: int, num_iters: int = 30, num_restarts: int = 4,
                 seed: int = 0) -> torch.Tensor:
    """Spherical k-means over pixel embeddings [N, E] of a dataset; best of several restarts -> [K, E].

    The restarts run as one batched problem; the one with the highest total cosine wins.
    """
    x = F.normalize(embeddings.float(), dim=-1).unsqueeze(0).expand(num_restarts, -1, -1)
    centres, assign = spherical_kmeans(x, num_clusters, num_iters, generator=torch.Generator().manual_seed(seed))
    score = torch.einsum("rnd,rnd->r", x, torch.gather(centres, 1, assign.unsqueeze(-1).expand(-1, -1, x.shape[-1])))
    return centres[score.argmax()]


def cluster_labels(out: ModelOutput, centres: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest cluster centre [K, E] for every pixel embedding: [B, H, W] cluster ids."""
    return upsample_labels(cosine_logits(out.embeddings, centres), size)


# ---------------------------------------------------------------- per-image compute


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


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


def image_segments(embeddings: torch.Tensor, num_segments: int, num_iters: int = 10, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's own segments: spherical k-means of its grid embeddings [E, h, w] (seeded) ->
    assignment [h*w] and each segment's prototype [S, E], the normalised mean of its cells (SegSort's)."""
    x = F.normalize(embeddings.reshape(embeddings.shape[0], -1).T.float(), dim=-1)
    k = min(num_segments, len(x))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    _, assign = spherical_kmeans(x[None], k, num_iters, generator=generator)
    one_hot = F.one_hot(assign[0], k).to(x.dtype)  # [N, S]
    return assign[0], F.normalize(one_hot.T @ x, dim=-1)


def knn_labels(out: ModelOutput, params: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """HSG/SegSort's k-NN protocol: each of an image's own segments (image_segments) takes the class most of
    its `k` nearest labelled training-set segment prototypes hold (cosine; a tie to the lowest class id)."""
    num_classes, k = int(params["num_classes"]), int(params["k"])
    votes_of = params["labels"]
    maps = []
    for embeddings in out.embeddings:
        assign, protos = image_segments(embeddings, int(params["num_segments"]))
        nearest = (protos @ params["prototypes"].T.to(protos.dtype)).topk(min(k, len(votes_of)), dim=1).indices
        counts = F.one_hot(votes_of[nearest], num_classes).sum(1)  # [S, K] votes
        maps.append(counts.argmax(1)[assign].view(embeddings.shape[-2:]))
    scores = F.one_hot(torch.stack(maps), num_classes).permute(0, 3, 1, 2).float()
    return upsample_labels(scores, size)


def _probe_labels(out: ModelOutput, params: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    logits = torch.einsum("behw,ke->bkhw", out.embeddings, params["weight"]) + params["bias"].view(1, -1, 1, 1)
    return upsample_labels(logits, size)


# How a head turns one network's outputs into labels [B, H, W]: (outputs, params, size) -> labels.
HEADS: dict[str, Callable[[ModelOutput, dict[str, torch.Tensor], tuple[int, int]], torch.Tensor]] = {
    "language": lambda out, p, size: (
        thresholded_labels(out, p["prototypes"], int(p["background"]), float(p["threshold"]), size)
        if "threshold" in p else language_labels(out, p["prototypes"], size)),
    "classfree": lambda out, p, size: classfree_labels(
        out, SemanticTargets(p["known"], p["centres"], p["explained"].bool()), size,
        CLASSFREE_DECISIONS[int(p["decision"])]),
    "clusters": lambda out, p, size: cluster_labels(out, p["centres"], size),
    "probe": _probe_labels,
    "knn": knn_labels,
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
    labels = cell_labels(mask, stride, h, w)
    # a fixed count per image keeps the rows stackable; small grids are drawn with replacement
    cells = rng.choice(h * w, num, replace=h * w < num)
    embeddings = out.embeddings[0].reshape(e, -1)[:, torch.from_numpy(cells).to(out.embeddings.device)]
    return embeddings.T.float().cpu().numpy(), labels[cells]


def cell_labels(mask: np.ndarray, stride: int, h: int, w: int) -> np.ndarray:
    """The mask label at the centre of each cell of an [h, w] grid of `stride` px: [h * w] (padding ignored)."""
    padded = np.pad(mask, ((0, h * stride - mask.shape[0]), (0, w * stride - mask.shape[1])),
                    constant_values=IGNORE_INDEX)
    return padded[stride // 2 :: stride, stride // 2 :: stride].reshape(-1)


def segment_samples(out: ModelOutput, mask: np.ndarray, stride: int, num_segments: int, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The image's own segments (image_segments) as labelled prototypes for the k-NN protocol: float32
    [num_segments, E] and the label most of each segment's labelled cells hold [num_segments]
    (IGNORE_INDEX for a segment with none, and for the rows that pad a grid smaller than num_segments)."""
    e, h, w = out.embeddings.shape[1:]
    assign, protos = image_segments(out.embeddings[0], num_segments, seed=seed)
    assign, labels = assign.cpu().numpy(), cell_labels(mask, stride, h, w)
    majority = np.full(num_segments, IGNORE_INDEX, np.int64)
    for s in range(len(protos)):
        held = labels[(assign == s) & (labels != IGNORE_INDEX)]
        if len(held):
            majority[s] = np.bincount(held).argmax()
    rows = np.zeros((num_segments, e), np.float32)
    rows[: len(protos)] = protos.float().cpu().numpy()
    return rows, majority
