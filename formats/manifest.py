"""The dataset manifest: which shards are complete and how many samples each holds.

Written by the shard job from the stats commit markers; read by the embed job and the trainer
(to size an epoch without opening any tar).
"""

from __future__ import annotations

from common.storage import filesystem, join, read_json, write_json_atomic

MANIFEST = "manifest.json"


def committed_stats(output: str) -> list[dict]:
    fs, root = filesystem(output)
    paths = sorted(p for p in fs.ls(root, detail=False) if p.endswith("_stats.json"))
    return [read_json(fs, p) for p in paths]


def write_manifest(output: str, num_planned_shards: int) -> dict:
    stats = committed_stats(output)
    manifest = {
        "shards": [{"name": f"{s['shard']}.tar", "num_samples": s["num_samples"]} for s in stats],
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
