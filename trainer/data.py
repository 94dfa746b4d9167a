"""Streaming training data: image shards and their CLIP sidecars read in lockstep by key, split by rank
and loader worker, shuffled, decoded into two aligned views per image, batched.

Every worker's stream is a pure function of (seed, epoch, rank, worker) and the shards' sample
counts: the block shuffle's order is computed on sample positions, so a restart reads only the
samples it still has to train on (from the start of their shuffle block, in the shard it falls in),
never the ones before: resuming mid-epoch neither repeats nor skips a sample, and costs the same at
any position. Streams cycle over their shards, so every rank runs the same number of steps. An
epoch shows every sample exactly once when the shards split evenly over ranks x loader workers;
otherwise a worker with fewer samples repeats some while another leaves some for later epochs.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from formats.manifest import read_manifest, shard_counts
from formats.shards import committed_names, iter_samples
from formats.sidecar import committed_shard_stats, decode_sample, recorded_shard_stats, sample_canvas, shard_parts
from model.views import ViewConfig, collate_views
from trainer.collectives import broadcast_object, distributed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardPair:
    name: str
    sidecar_parts: tuple[str, ...]
    num_samples: int  # samples with features (the sidecar's count)


def list_shards(shards_url: str, clip_url: str) -> list[ShardPair]:
    """Shards that are complete in both the image dataset and the embed output, in name order.

    Object-store calls: the manifest, one listing of the embed output, the sidecar index (and a stats
    read for any shard committed after it): a handful, whatever the number of shards."""
    pairs = []
    counts = shard_counts(read_manifest(shards_url))
    recorded = recorded_shard_stats(clip_url)
    committed = committed_names(clip_url, list(counts), known=recorded)
    for name in sorted(set(counts) - set(committed)):
        log.warning("shard %s has no finished sidecar yet; left out", name)
    sidecars = committed_shard_stats(clip_url, committed, recorded)
    for name, stats in sidecars.items():
        if stats["num_samples"]:
            pairs.append(ShardPair(name, tuple(shard_parts(stats)), stats["num_samples"]))
    if not pairs:
        raise ValueError(f"no shard of {shards_url} has finished sidecars in {clip_url}")
    return pairs


def shared_shard_list(shards_url: str, clip_url: str, device: torch.device) -> list[ShardPair]:
    """list_shards on rank 0 only (a manifest read, then a listing and a stats read per shard), sent to
    every rank: the object-store calls at start do not grow with the number of ranks. `device`: the
    process group backend's (trainer.collectives.backend_device)."""
    first = not distributed() or dist.get_rank() == 0
    return broadcast_object(list_shards(shards_url, clip_url) if first else None, device)


def epoch_order(shards: list[ShardPair], seed: int, epoch: int) -> list[ShardPair]:
    """The same permutation on every rank for (seed, epoch)."""
    order = list(shards)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def split(items: list, index: int, count: int) -> list:
    return items[index::count]


def steps_per_epoch(shards: list[ShardPair], world_size: int, batch_size: int) -> int:
    """Steps every rank runs in an epoch: the corpus once over, divided evenly."""
    return max(1, sum(s.num_samples for s in shards) // (world_size * batch_size))


def paired_samples(shards_url: str, clip_url: str, shard: ShardPair) -> Iterator[dict]:
    """(image bytes, sidecar bytes) per key, in shard order; images without features are passed over."""
    with contextlib.closing(iter_samples(shards_url, shard.name)) as images:
        for part in shard.sidecar_parts:
            for side in iter_samples(clip_url, part):
                image = next(images)
                while image["__key__"] != side["__key__"]:  # the embed job skipped this one
                    image = next(images)
                yield {"__key__": side["__key__"], "image": image, "sidecar": side}


def block_order(total: int, block: int, rng: random.Random) -> list[int]:
    """One pass's order over positions 0..total-1: each run of `block` consecutive positions shuffled.

    Like a shuffle buffer of `block` samples it holds at most that many in memory, but no sample
    outlives its block (a buffer can hold one for ever), so a resume reads from the start of its
    block, never further back: the cost of resuming does not depend on where.
    """
    order: list[int] = []
    for start in range(0, total, block):
        chunk = list(range(start, min(start + block, total)))
        rng.shuffle(chunk)
        order += chunk
    return order


def decode_pair(sample: dict, image_size: int, features: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """-> image uint8 [3, S, S] (the embed job's canvas), superpixels [S, S], dense CLIP [D, g, g]: None
    when not wanted (an online teacher makes them from the views) or not stored (embed --storage none)."""
    canvas = sample_canvas(sample["image"], image_size)
    side = decode_sample({k: v for k, v in sample["sidecar"].items() if features or k == "sp.png"})
    return (torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1), torch.from_numpy(side.superpixels),
            None if side.dense is None else torch.from_numpy(side.dense))


@dataclass
class StreamSpec:
    shards_url: str
    clip_url: str
    shards: list[ShardPair]
    image_size: int  # the embed job's canvas
    batch_size: int
    shuffle_buffer: int
    views: ViewConfig
    feature_size: int
    seed: int
    max_bad_samples: int
    views_on_device: bool = False  # ship raw samples; finish_batch cuts the views where the step runs
    online_teacher: bool = False  # stored features are not read: the teacher runs on the views (trainer.step)


def finish_batch(batch: dict, spec: StreamSpec, device: torch.device) -> dict:
    """A loader batch on `device`, ready for the step: raw samples (views_on_device) are cut into their
    two views there, with the rng the loader would have used, so both paths give the same views."""
    if "view_seed" not in batch:
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    dense = batch["dense"].to(device, non_blocking=True).float() if "dense" in batch else [None] * len(batch["keys"])
    samples = list(zip(batch["canvas"].to(device, non_blocking=True),
                       batch["superpixels"].to(device, non_blocking=True).long(), dense))
    views = collate_views(samples, spec.views, spec.feature_size, random.Random(batch["view_seed"]))
    return {**{k: v.to(device) for k, v in views.items()}, "epoch": batch["epoch"],
            "batch_in_epoch": batch["batch_in_epoch"], "keys": batch["keys"]}


class TrainStream(IterableDataset):
    """One rank's batches of view pairs, from global batch `start` on, across epochs without end.

    Global batch G is batch G % steps of epoch G // steps. DataLoader hands batch k of a loader to
    worker k % W, so worker w serves G = start + w, start + w + W, ...; within an epoch those are the
    batches of one "role" r (j = r, r + W, ...), cut from the shards of that role.
    """

    def __init__(self, spec: StreamSpec, rank: int, world_size: int, steps: int, start: int = 0):
        self.spec, self.rank, self.world_size, self.steps, self.start = spec, rank, world_size, steps, start

    def _role_batches(self, epoch: int, role: int, num_roles: int, first: int) -> Iterator[dict]:
        """Batches j >= first (j = role, role + W, ...) < steps of `role` in `epoch`; earlier ones not read."""
        ordered = epoch_order(self.spec.shards, self.spec.seed, epoch)
        shards = split(split(ordered, self.rank, self.world_size), role, num_roles)
        if not shards:
            raise ValueError(f"rank {self.rank} loader role {role} has no shard: use fewer loader workers or "
                             f"ranks than the {len(self.spec.shards)} shards")
        stream_id = ((self.spec.seed * 1_000_003 + epoch) * 10_007 + self.rank) * 101 + role
        # batches j = role + local * num_roles; those before `first` were trained on before a restart
        skipped = max(0, -(-(first - role) // num_roles))
        samples = _passes(self.spec, shards, random.Random(stream_id), skip=skipped * self.spec.batch_size)
        bad = 0
        for local, raw in enumerate(_chunks(samples, self.spec.batch_size), skipped):
            j = role + local * num_roles
            if j >= self.steps:
                return
            decoded, keys = [], []
            for sample in raw:  # batches are cut from raw samples, so a bad one shrinks its batch only
                try:
                    decoded.append(decode_pair(sample, self.spec.image_size, not self.spec.online_teacher))
                    keys.append(sample["__key__"])
                except Exception as e:
                    bad += 1
                    log.warning("bad sample %s skipped: %s", sample["__key__"], e)
                    if bad > self.spec.max_bad_samples:
                        raise RuntimeError(f"more than {self.spec.max_bad_samples} bad samples in one loader") from e
            if not decoded:
                raise RuntimeError(f"every sample of batch {j} of epoch {epoch} is bad")
            view_seed = stream_id * 1_000_003 + j  # views depend on the batch only
            info = {"epoch": epoch, "batch_in_epoch": j, "keys": keys}
            if self.spec.views_on_device:
                # a quarter of the float views' bytes crosses to the training process: uint8 canvases,
                # int32 superpixel ids, fp16 features (the sidecar's own precision; none for an online teacher)
                raw_batch = {"canvas": torch.stack([d[0] for d in decoded]),
                             "superpixels": torch.stack([d[1] for d in decoded]).to(torch.int32)}
                if decoded[0][2] is not None:
                    raw_batch["dense"] = torch.stack([d[2] for d in decoded]).half()
                yield {**raw_batch, "view_seed": view_seed, **info}
            else:
                yield {**collate_views(decoded, self.spec.views, self.spec.feature_size, random.Random(view_seed)),
                       **info}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        g = self.start + worker  # the first global batch this worker serves
        while True:
            epoch, j = divmod(g, self.steps)
            yield from self._role_batches(epoch, j % num_workers, num_workers, j)
            next_epoch = (epoch + 1) * self.steps
            g = next_epoch + (g - next_epoch) % num_workers


def _passes(spec: StreamSpec, shards: list[ShardPair], rng: random.Random, skip: int = 0) -> Iterator[dict]:
    """A role's samples from sample `skip` on, shuffled pass after pass over its shards (each pass
    complete before the next starts), as many passes as needed: every rank runs the same number of steps.

    Each pass's order is drawn over sample positions from the shards' counts alone (block_order), so
    the passes and samples being skipped cost arithmetic, not reading."""
    total = sum(s.num_samples for s in shards)
    while True:
        order = block_order(total, spec.shuffle_buffer, rng)
        if skip >= total:
            skip -= total
            continue
        yield from _pass_in_order(spec, shards, order, skip)
        skip = 0


def _pass_in_order(spec: StreamSpec, shards: list[ShardPair], order: list[int], start: int) -> Iterator[dict]:
    """The samples at positions order[start:] of one pass over `shards`, in that order.

    Shards are read once, in sequence, and only from the first one holding a position still to come;
    a sample is held from its reading to its turn, at most one block.
    """
    turn = [0] * len(order)  # position -> when it is yielded
    for t, position in enumerate(order):
        turn[position] = t
    first = min(order[start:], default=len(order))
    held: dict[int, dict] = {}
    reader = _positions(spec, shards, first)
    for position in order[start:]:
        while position not in held:
            read, sample = next(reader)
            if turn[read] >= start:
                held[read] = sample
        yield held.pop(position)


def _positions(spec: StreamSpec, shards: list[ShardPair], first: int) -> Iterator[tuple[int, dict]]:
    """(position in the pass, sample) from position `first` on; shards wholly before it are not opened."""
    offset = 0
    for shard in shards:
        if offset + shard.num_samples > first:
            count = 0
            for count, sample in enumerate(paired_samples(spec.shards_url, spec.clip_url, shard), 1):
                if offset + count - 1 >= first:
                    yield offset + count - 1, sample
            if count != shard.num_samples:
                raise RuntimeError(f"shard {shard.name} has {count} paired samples, its sidecar stats say "
                                   f"{shard.num_samples}")
        offset += shard.num_samples


def _chunks(samples: Iterator[dict], size: int) -> Iterator[list[dict]]:
    chunk = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield chunk
            chunk = []


def make_loader(spec: StreamSpec, rank: int, world_size: int, steps: int, start: int, num_workers: int
                ) -> DataLoader:
    """The rank's batches from global batch `start` on, in a fixed order whatever the number of workers."""
    if len(spec.shards) % (world_size * max(1, num_workers)):
        log.warning("%d shards do not split evenly over %d ranks x %d loader workers: an epoch will repeat some "
                    "samples and leave others", len(spec.shards), world_size, max(1, num_workers))
    stream = TrainStream(spec, rank, world_size, steps, start)
    return DataLoader(stream, batch_size=None, num_workers=num_workers,
                      prefetch_factor=4 if num_workers else None, multiprocessing_context="spawn" if num_workers else None)
