"""The embed job's output, the trainer's input: per-key sidecar samples, their parts, and the manifest.

For image shard `00000.tar`, the embed job writes `00000.tar` under its own output folder with,
per key (the image shard's keys, same order), everything on the image's *canvas*: the centred square
crop resized to the teacher's input size (`to_canvas`), which the trainer rebuilds the same way:
  KEY.dense.npy    the dense CLIP grid [D, gh, gw]: float16, or int8 with KEY.scale.npy
  KEY.scale.npy    (int8 form only) float16 [gh, gw], one scale per vector: value = int8 * scale / 127
  KEY.global.npy   float16 [D], the global image embedding
  KEY.sp.png       uint16 PNG [S, S], superpixel ids on the canvas
The "none" form keeps KEY.sp.png only: the trainer then runs the teacher itself on each view
(teacher.mode=online), and a sidecar costs a few KB per image instead of ~200.
Both the embed job and the trainer go through `encode_sample` / `decode_sample`, so the format lives in one place.

Samples of image shard NAME are written in parts `NAME-PPP` (each a committed shard of
formats.shards); `NAME_stats.json` lists them once every part is there, and `sidecar_index.json`
gathers every committed shard's stats, during a run and at its end (the trainer's start reads that
one file).
`embed_manifest.json` records how the features were made, so a rerun with other settings is refused.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

from common.config import ConfigError
from common.storage import filesystem, join, read_json, write_json_atomic
from formats.images import ImageRejected, ResizeSpec, decode_bgr
from formats.shards import SAMPLE_IMAGE_KEYS, is_committed, read_stats, read_stats_of, stats_path, tar_name

STORAGE_FORMATS = ("float16", "int8", "none")  # "none": superpixels only


def to_canvas(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: the centred square, resized (area when shrinking)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[top:top + side, left:left + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return square if side == size else cv2.resize(square, (size, size), interpolation=interp)


def sample_canvas(sample: dict, size: int) -> np.ndarray:
    """The canvas of a webdataset sample's image (the embed job and the trainer both build it here).

    Raises ImageRejected for a sample without an image or with one that does not decode.
    """
    ext = next((e for e in SAMPLE_IMAGE_KEYS if e in sample), None)
    if ext is None:
        raise ImageRejected("no_image", f"extensions {sorted(k for k in sample if not k.startswith('__'))}")
    bgr = decode_bgr(sample[ext], ResizeSpec(resize_mode="none")).bgr
    return to_canvas(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def quantize_int8(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[D, gh, gw] float -> (int8 [D, gh, gw], float16 scales [gh, gw]): each vector scaled by its max |value|."""
    scale = np.abs(dense).max(axis=0).astype(np.float16)
    safe = np.where(scale > 0, scale.astype(np.float32), 1.0)
    return np.clip(np.rint(dense / safe * 127), -127, 127).astype(np.int8), scale


def dequantize_int8(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * (scale.astype(np.float32) / 127)


@dataclass
class SidecarSample:
    dense: np.ndarray | None  # float32 [D, gh, gw]; None in the "none" form
    global_embedding: np.ndarray | None  # float32 [D]; None in the "none" form
    superpixels: np.ndarray  # int64 [H, W]


def encode_sample(key: str, dense: np.ndarray | None, global_embedding: np.ndarray | None, superpixels: np.ndarray,
                  storage: str = "float16") -> dict[str, bytes | str]:
    """One webdataset sample dict ({"__key__": key, "dense.npy": ..., ...}); the "none" form takes no features."""
    if storage not in STORAGE_FORMATS:
        raise ValueError(f"storage {storage!r} unknown (choose from {', '.join(STORAGE_FORMATS)})")
    sample: dict[str, bytes | str] = {"__key__": key}
    if storage != "none":
        sample["global.npy"] = _npy(global_embedding.astype(np.float16))
    if storage == "float16":
        sample["dense.npy"] = _npy(dense.astype(np.float16))
    elif storage == "int8":
        codes, scale = quantize_int8(dense.astype(np.float32))
        sample["dense.npy"], sample["scale.npy"] = _npy(codes), _npy(scale)
    ok, png = cv2.imencode(".png", superpixels.astype(np.uint16))
    if not ok:
        raise ValueError(f"{key}: superpixels could not be encoded as PNG")
    sample["sp.png"] = png.tobytes()
    return sample


def decode_sample(sample: dict[str, bytes]) -> SidecarSample:
    """Inverse of `encode_sample` for any storage form (told apart by the files present)."""
    dense = _load_npy(sample["dense.npy"]) if "dense.npy" in sample else None
    if dense is not None:
        dense = dequantize_int8(dense, _load_npy(sample["scale.npy"])) if "scale.npy" in sample \
            else dense.astype(np.float32)
    pooled = _load_npy(sample["global.npy"]).astype(np.float32) if "global.npy" in sample else None
    superpixels = cv2.imdecode(np.frombuffer(sample["sp.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    if superpixels is None:
        raise ValueError("superpixel PNG is corrupt")
    return SidecarSample(dense, pooled, superpixels.astype(np.int64))


# ---------------------------------------------------------------- parts, shard commit, manifest

EMBED_MANIFEST = "embed_manifest.json"


def part_name(shard: str, part: int) -> str:
    return f"{shard}-{part:03d}"


def num_parts(num_samples: int, chunk_size: int) -> int:
    return max(1, -(-num_samples // chunk_size))


def commit_shard(output: str, shard: str, num_parts: int) -> dict | None:
    """Write `SHARD_stats.json` (listing the parts) when every part is committed; None otherwise.

    Every model actor calls this after its part: parts finish roughly in order, so the last ones are
    checked first and an early caller stops at its first request."""
    parts = [part_name(shard, p) for p in range(num_parts)]
    if not all(is_committed(output, p) for p in reversed(parts)):
        return None
    part_stats = [read_stats(output, p) for p in parts]
    failures = sum((Counter(s["failures"]) for s in part_stats), Counter())
    stats = {"shard": shard, "parts": [tar_name(p) for p in parts],
             "num_samples": sum(s["num_samples"] for s in part_stats), "failures": dict(failures)}
    fs, root = filesystem(output)
    write_json_atomic(fs, stats_path(root, shard), stats)
    return stats


SIDECAR_INDEX = "sidecar_index.json"  # every committed image shard's stats, rewritten during and after each run


def write_sidecar_index(output: str, stats: dict[str, dict]) -> None:
    """Image shard name -> its commit stats (parts, samples with features, failures), for all committed;
    not rewritten when it already says that."""
    fs, root = filesystem(output)
    path, index = join(root, SIDECAR_INDEX), {n: stats[n] for n in sorted(stats)}
    if not fs.exists(path) or read_json(fs, path) != index:
        write_json_atomic(fs, path, index)


def recorded_shard_stats(output: str) -> dict[str, dict]:
    """The sidecar index under `output`: image shard name -> commit stats ({} with none)."""
    fs, root = filesystem(output)
    path = join(root, SIDECAR_INDEX)
    return read_json(fs, path) if fs.exists(path) else {}


def committed_shard_stats(output: str, names: list[str], recorded: dict[str, dict]) -> dict[str, dict]:
    """The commit stats of committed image shards `names`: from the index's `recorded` stats where it
    lists them, from each shard's stats file otherwise (shards committed after the last index)."""
    unrecorded = read_stats_of(output, [n for n in names if n not in recorded])
    return {n: recorded[n] if n in recorded else unrecorded[n] for n in names}


def shard_parts(stats: dict) -> list[str]:
    """The part names (no extension) a committed sidecar shard's stats list."""
    return [p.removesuffix(".tar") for p in stats["parts"]]


def read_embed_manifest(output: str) -> dict:
    """The embed job's manifest of `output`; a ConfigError (one line for the user) when there is none."""
    fs, root = filesystem(output)
    try:  # one read: a missing file is the read's own error
        return read_json(fs, join(root, EMBED_MANIFEST))
    except FileNotFoundError:
        raise ConfigError(f"{output} holds no CLIP sidecars: no {EMBED_MANIFEST} there (pipelines/embed.py writes "
                          "it)") from None


def check_embed_manifest(output: str, manifest: dict) -> None:
    """Write the manifest, or refuse when the output already holds features made another way."""
    fs, root = filesystem(output)
    path = join(root, EMBED_MANIFEST)
    if fs.exists(path):
        existing = read_json(fs, path)
        differ = sorted(k for k in manifest if existing.get(k) != manifest[k])
        if differ:
            raise ConfigError(f"{output} holds features made with other settings ({', '.join(differ)}: "
                              f"{existing.get(differ[0])!r} there, {manifest[differ[0]]!r} now); use a new output")
        return
    write_json_atomic(fs, path, manifest)
