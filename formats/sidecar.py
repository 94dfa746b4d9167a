"""The CLIP sidecar format: per key, what the losses need beside the image, packed and unpacked here.

For image shard `00000.tar`, the embed job writes `00000.tar` under its own output folder with,
per key (the image shard's keys, same order), everything on the image's *canvas*: the centred square
crop resized to the teacher's input size (`to_canvas`), which the trainer rebuilds the same way:
  KEY.dense.npy    the dense CLIP grid [D, gh, gw]: float16, or int8 with KEY.scale.npy
  KEY.scale.npy    (int8 form only) float16 [gh, gw], one scale per vector: value = int8 * scale / 127
  KEY.global.npy   float16 [D], the global image embedding
  KEY.sp.png       uint16 PNG [S, S], superpixel ids on the canvas
Both the embed job and the trainer go through `encode_sample` / `decode_sample`, so the format lives in one place.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np

from formats.images import ImageRejected, ResizeSpec, decode_bgr

STORAGE_FORMATS = ("float16", "int8")


def to_canvas(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: the centred square, resized (area when shrinking)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[top:top + side, left:left + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return square if side == size else cv2.resize(square, (size, size), interpolation=interp)


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def sample_canvas(sample: dict, size: int) -> np.ndarray:
    """The canvas of a webdataset sample's image (the embed job and the trainer both build it here).

    Raises ImageRejected for a sample without an image or with one that does not decode.
    """
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise ImageRejected("no_image", f"extensions {sorted(k for k in sample if not k.startswith('__'))}")
    bgr, _ = decode_bgr(sample[ext], ResizeSpec(resize_mode="none"))
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
    dense: np.ndarray  # float32 [D, gh, gw]
    global_embedding: np.ndarray  # float32 [D]
    superpixels: np.ndarray  # int64 [H, W]


def encode_sample(key: str, dense: np.ndarray, global_embedding: np.ndarray, superpixels: np.ndarray,
                  storage: str = "float16") -> dict[str, bytes | str]:
    """One webdataset sample dict ({"__key__": key, "dense.npy": ..., ...})."""
    sample: dict[str, bytes | str] = {"__key__": key, "global.npy": _npy(global_embedding.astype(np.float16))}
    if storage == "float16":
        sample["dense.npy"] = _npy(dense.astype(np.float16))
    elif storage == "int8":
        codes, scale = quantize_int8(dense.astype(np.float32))
        sample["dense.npy"], sample["scale.npy"] = _npy(codes), _npy(scale)
    else:
        raise ValueError(f"storage {storage!r} unknown (choose from {', '.join(STORAGE_FORMATS)})")
    ok, png = cv2.imencode(".png", superpixels.astype(np.uint16))
    if not ok:
        raise ValueError(f"{key}: superpixels could not be encoded as PNG")
    sample["sp.png"] = png.tobytes()
    return sample


def decode_sample(sample: dict[str, bytes]) -> SidecarSample:
    """Inverse of `encode_sample` for either storage form (told apart by the presence of scale.npy)."""
    dense = _load_npy(sample["dense.npy"])
    dense = dequantize_int8(dense, _load_npy(sample["scale.npy"])) if "scale.npy" in sample else dense.astype(np.float32)
    superpixels = cv2.imdecode(np.frombuffer(sample["sp.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    if superpixels is None:
        raise ValueError("superpixel PNG is corrupt")
    return SidecarSample(dense, _load_npy(sample["global.npy"]).astype(np.float32), superpixels.astype(np.int64))
