"""The embed job's two stages: CPU tasks cut an image shard into decoded canvas chunks with superpixels;
model actors run the CLIP teacher on a chunk and publish it as one sidecar part.

An actor takes CHUNKS_AT_ONCE chunks at a time (the actor pool's concurrent calls): the model runs one of them
while the other's part is encoded and uploaded, so the device does not wait for the writing.

Each part is a shard of its own (formats.sidecar names it, formats.shards commits it), so a rerun
redoes only unfinished parts; the actor that writes an image shard's last missing part commits the
shard.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import ray
import torch

from common.progress import Reporter
from formats.images import ResizeSpec, configure_decoders
from formats.shards import ShardWriter, is_committed, read_samples, tar_name
from formats.sidecar import commit_shard, encode_sample, num_parts, part_name, sample_canvas
from formats.teacher_weights import load_teacher
from model.clip_teacher import TeacherConfig, auto_precision, dense_and_global
from model.superpixels import SuperpixelConfig, superpixels

CHUNKS_AT_ONCE = 2  # one in the model, one being written


@dataclass(frozen=True)
class EmbedSpec:
    input: str
    output: str
    image_size: int  # canvas side = the teacher's input size
    chunk_size: int  # samples per part: bounds the memory a chunk holds in flight
    superpixels: SuperpixelConfig
    storage: str


def prepare_chunks(row: dict, spec: EmbedSpec) -> list[dict]:
    """One row per unfinished part of shard row["shard"]: keys, canvases [N, S, S, 3], superpixels [N, S, S]."""
    configure_decoders(ResizeSpec().max_image_pixels)
    shard = row["shard"]
    samples = read_samples(spec.input, shard)
    chunks = []
    total = num_parts(len(samples), spec.chunk_size)
    for part in range(total):
        if is_committed(spec.output, part_name(shard, part)):
            continue
        keys, canvases, regions, failures = [], [], [], []
        for sample in samples[part * spec.chunk_size:(part + 1) * spec.chunk_size]:
            try:
                canvas = sample_canvas(sample, spec.image_size)
                regions.append(superpixels(canvas, spec.superpixels))
            except Exception as e:  # one bad sample is recorded, never fatal
                failures.append((sample["__key__"], getattr(e, "reason", "corrupt"), str(e)))
                continue
            keys.append(sample["__key__"])
            canvases.append(canvas)
        s = spec.image_size
        chunks.append({
            "shard": shard, "part": part, "num_parts": total, "keys": keys,
            "canvas": np.stack(canvases) if canvases else np.zeros((0, s, s, 3), np.uint8),
            "superpixels": np.stack(regions) if regions else np.zeros((0, s, s), np.uint16),
            "failures": failures,
        })
    return chunks


class ClipEmbedder:
    """A Ray Data actor: holds the teacher once, embeds a chunk in batches and publishes its part."""

    def __init__(self, clip_model: str, clip_pretrained: str, precision: str, spec: EmbedSpec, batch_size: int,
                 last_block: str, num_threads: int, progress: Reporter | None = None):
        # where the model runs decides its device and an "auto" precision, not the driver
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        teacher = TeacherConfig(clip_model, clip_pretrained, auto_precision(precision, self.device))
        # reported per part: an actor given a GPU that CUDA cannot see (a driver mismatch) shows as such
        assigned = len(ray.get_runtime_context().get_accelerator_ids().get("GPU", []))
        self.where = (f"{self.device} ({teacher.precision})" if spec.storage != "none" else "cpu (no model)") + \
            f" with {assigned} GPU assigned"
        # Ray pins a 1-CPU actor to one thread; on a CPU node the model is the work, so it takes
        # every core unless told otherwise (the decode tasks beside it are a small fraction)
        threads = num_threads or (0 if self.device == "cuda" else os.cpu_count())
        if threads:
            torch.set_num_threads(threads)
        # superpixels-only sidecars (storage "none") need no teacher: the trainer runs it online
        self.teacher = load_teacher(teacher, self.device) if spec.storage != "none" else None
        self.spec, self.batch_size, self.last_block = spec, batch_size, last_block
        self.model_lock = threading.Lock()  # chunks come CHUNKS_AT_ONCE at a time; the model takes one
        self.progress = progress  # hears of each batch as the model finishes it

    def embed(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, S, S, 3] -> dense [N, D, g, g] and global [N, D], float32 numpy."""
        dense, pooled = [], []
        with self.model_lock, torch.inference_mode():
            for start in range(0, len(canvas), self.batch_size):
                # a copy: Ray hands the block read-only, which torch warns of (a uint8 batch, a few MB)
                x = torch.from_numpy(np.array(canvas[start:start + self.batch_size]))
                if self.device == "cuda":  # uint8 from pinned memory: a quarter of float32's bytes, asynchronous
                    x = x.pin_memory().to(self.device, non_blocking=True)
                x = x.permute(0, 3, 1, 2).float() / 255
                d, g = dense_and_global(self.teacher, self.teacher.normalise(x), self.last_block)
                dense.append(d.float().cpu().numpy())
                pooled.append(g.float().cpu().numpy())
                if self.progress:
                    self.progress.add(len(x))
        return np.concatenate(dense), np.concatenate(pooled)

    def __call__(self, chunk: dict) -> dict:
        started = time.time()
        name = part_name(chunk["shard"], chunk["part"])
        keys = list(chunk["keys"])
        dense = pooled = [None] * len(keys)
        if keys and self.teacher:
            dense, pooled = self.embed(chunk["canvas"])
        if self.progress:  # what embed() did not count: superpixels-only samples, and the failures
            self.progress.add((0 if self.teacher else len(keys)) + len(chunk["failures"]))
            self.progress.flush()
        writer = ShardWriter(self.spec.output, name)
        try:
            for i, key in enumerate(keys):
                files = encode_sample(key, dense[i], pooled[i], chunk["superpixels"][i], self.spec.storage)
                writer.add_files(key, {k: v for k, v in files.items() if k != "__key__"})
                writer.add_ledger_row({"key": key, "url": tar_name(chunk["shard"]), "status": "success"})
            for key, reason, error in chunk["failures"]:
                writer.add_ledger_row({"key": key, "url": tar_name(chunk["shard"]), "status": reason,
                                       "error_message": error})
            stats = {"part": name, "shard": chunk["shard"], "num_samples": len(keys),
                     "failures": dict(Counter(reason for _, reason, _ in chunk["failures"])),
                     "start_time": started, "end_time": time.time()}
            writer.commit(stats)
        except BaseException:
            writer.abort()
            raise
        # the image shard is committed where its last part is written, not by the driver one by one
        shard_stats = commit_shard(self.spec.output, chunk["shard"], chunk["num_parts"])
        return {"shard": chunk["shard"], "num_samples": len(keys), "actor": self.where,
                "shard_stats": json.dumps(shard_stats) if shard_stats else "",
                "num_failed": len(chunk["failures"]), "seconds": time.time() - started}


