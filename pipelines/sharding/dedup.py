"""Keeping one copy of each distinct image across a whole shard job, resumable.

Ray actors remember the first key that claimed each content hash, each for its own slice of the hash
space (a hash's first 8 hex digits modulo the number of actors), so claims spread over the actors and
so does the memory (about 150 bytes per kept image: 1B images over 64 actors is ~2.3 GB each). At
start they are seeded from the ledgers of already committed shards, so a rerun keeps the copies it
kept before. A claim that cannot be answered fails its shard (DedupFailed), never an image.
"""

from __future__ import annotations

import io

import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from common.storage import filesystem, join
from formats.shards import ledger_name


@ray.remote(num_cpus=0)
class FirstSeen:
    def __init__(self, seed: dict[str, str]):
        self._first = seed

    def claim(self, sha256: str, key: str) -> str:
        """The key that owns this content: `key` itself if it is the first to ask."""
        return self._first.setdefault(sha256, key)


def committed_hashes(output: str, names: list[str]) -> dict[str, str]:
    fs, root = filesystem(output)
    seed: dict[str, str] = {}
    for name in names:
        table = pq.read_table(io.BytesIO(fs.cat_file(join(root, ledger_name(name)))), columns=["key", "status", "sha256"])
        kept = table.filter(pc.equal(table["status"], "success"))
        seed.update(zip(kept["sha256"].to_pylist(), kept["key"].to_pylist()))
    return seed


class DedupFailed(RuntimeError):
    """The dedup service did not answer: the shard fails (and is retried whole), no image is marked."""


def partition(sha256: str, count: int) -> int:
    return int(sha256[:8], 16) % count


def start_dedup(output: str, committed_names: list[str], num_actors: int = 1):
    """A callable `claim(sha256, key) -> owner key` usable from any Ray task; raises DedupFailed."""
    seeds: list[dict[str, str]] = [{} for _ in range(num_actors)]
    for sha256, key in committed_hashes(output, committed_names).items():
        seeds[partition(sha256, num_actors)][sha256] = key
    actors = [FirstSeen.remote(seed) for seed in seeds]

    def claim(sha256: str, key: str) -> str:
        try:
            return ray.get(actors[partition(sha256, num_actors)].claim.remote(sha256, key))
        except Exception as e:  # the actor died or cannot be reached
            raise DedupFailed(f"dedup: {type(e).__name__}: {e}") from e

    claim.actors = actors  # for whoever must stop them (and for tests that kill one)
    return claim
