"""The dataset manifest: which shards are complete and how many samples each holds.

Written by the shard job from the stats commit markers; read by the embed job and the trainer
(to size an epoch without opening any tar).
"""

from __future__ import annotations

from common.storage import filesystem, join, read_json, write_json_atomic
from formats.shards import committed_names, read_stats, tar_name

MANIFEST = "manifest.json"


def committed_stats(output: str) -> list[dict]:
    return [read_stats(output, name) for name in committed_names(output)]


def write_manifest(output: str, num_planned_shards: int) -> dict:
    stats = committed_stats(output)
    manifest = {
        "shards": [{"name": tar_name(s["shard"]), "num_samples": s["num_samples"]} for s in stats],
        "num_shards": len(stats),
        "num_samples": sum(s["num_samples"] for s in stats),
        "complete": len(stats) == num_planned_shards,
    }
    fs, root = filesystem(output)
    write_json_atomic(fs, join(root, MANIFEST), manifest)
    return manifest


def read_manifest(dataset: str) -> dict:
    fs, root = filesystem(dataset)
    return read_json(fs, join(root, MANIFEST))


def shard_counts(manifest: dict) -> dict[str, int]:
    """Shard name (no extension) -> samples, in manifest order."""
    return {s["name"].removesuffix(".tar"): s["num_samples"] for s in manifest["shards"]}
