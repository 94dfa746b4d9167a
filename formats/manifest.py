"""The dataset manifest: which shards are complete and how many samples each holds.

Written by the shard job from its tasks' results and the previous manifest (a resume of 100k done
shards reads one file, not 100k markers); read by the embed job and the trainer (to size an epoch
without opening any tar).
"""

from __future__ import annotations

from common.config import ConfigError
from common.storage import filesystem, join, read_json, write_json_atomic
from formats.shards import read_stats_of, tar_name

MANIFEST = "manifest.json"
SIZES = "sizes.json"  # shard file -> samples: what open_clip_train (and webdataset users) read for a dataset's size


def write_manifest(output: str, num_planned_shards: int, counts: dict[str, int]) -> dict:
    """The manifest of the committed shards `counts` (name -> samples), in name order, and their sizes.json."""
    names = sorted(counts)
    manifest = {
        "shards": [{"name": tar_name(n), "num_samples": counts[n]} for n in names],
        "num_shards": len(names),
        "num_samples": sum(counts.values()),
        "complete": len(names) == num_planned_shards,
    }
    fs, root = filesystem(output)
    write_json_atomic(fs, join(root, SIZES), {tar_name(n): counts[n] for n in names})
    write_json_atomic(fs, join(root, MANIFEST), manifest)
    return manifest


def recorded_counts(output: str) -> dict[str, int]:
    """Shard name -> samples, as the last manifest under `output` records them ({} with none)."""
    fs, root = filesystem(output)
    path = join(root, MANIFEST)
    return shard_counts(read_json(fs, path)) if fs.exists(path) else {}


def committed_counts(output: str, names: list[str], recorded: dict[str, int]) -> dict[str, int]:
    """Samples of committed shards `names`: from the last manifest's `recorded` counts where it lists
    them, from their stats markers otherwise (shards a killed run committed after its last manifest)."""
    unrecorded = read_stats_of(output, [n for n in names if n not in recorded])
    return {n: recorded[n] if n in recorded else unrecorded[n]["num_samples"] for n in names}


def _no_shards(dataset: str) -> ConfigError:
    return ConfigError(f"{dataset} holds no shards: no {MANIFEST} there (pipelines/shard.py writes it)")


def check_dataset(dataset: str) -> None:
    """A ConfigError (one line for the user) when `dataset` has no manifest: one existence check."""
    fs, root = filesystem(dataset)
    if not fs.exists(join(root, MANIFEST)):
        raise _no_shards(dataset)


def read_manifest(dataset: str) -> dict:
    """The manifest; a ConfigError when there is none (one read: a missing file is the read's own error)."""
    fs, root = filesystem(dataset)
    try:
        return read_json(fs, join(root, MANIFEST))
    except FileNotFoundError:
        raise _no_shards(dataset) from None


def shard_counts(manifest: dict) -> dict[str, int]:
    """Shard name (no extension) -> samples, in manifest order."""
    return {s["name"].removesuffix(".tar"): s["num_samples"] for s in manifest["shards"]}
