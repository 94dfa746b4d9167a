"""Keeping one copy of each distinct image across a whole shard job, resumable.

A single Ray actor remembers the first key that claimed each content hash. At start it is seeded
from the ledgers of already committed shards, so a rerun keeps the copies it kept before.
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


def start_dedup(output: str, committed_names: list[str]):
    """A callable `claim(sha256, key) -> owner key` usable from any Ray task; raises DedupFailed."""
    actor = FirstSeen.remote(committed_hashes(output, committed_names))

    def claim(sha256: str, key: str) -> str:
        try:
            return ray.get(actor.claim.remote(sha256, key))
        except Exception as e:  # the actor died or cannot be reached
            raise DedupFailed(f"dedup: {type(e).__name__}: {e}") from e

    claim.actor = actor  # for whoever must stop it (and for tests that kill it)
    return claim
