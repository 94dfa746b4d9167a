"""Splitting the input list into shards once, so every rerun sees the same keys in the same shards.

The plan is written under `OUTPUT/_plan/`: one small parquet of inputs per shard, then
`plan.json` last. A rerun reads the plan instead of listing the input again.
"""

from __future__ import annotations

import io
import itertools
import logging
from dataclasses import asdict, dataclass, field

import pyarrow.parquet as pq

from common.config import ConfigError
from common.storage import filesystem, join, read_json, write_bytes_atomic, write_json_atomic
from pipelines.sharding.sources import SourceSpec, list_inputs, rows_to_table
from pipelines.sharding.worker import plan_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    input: str
    samples_per_shard: int
    num_inputs: int
    num_shards: int
    shard_digits: int
    key_digits: int
    # every setting that shapes what a shard holds (image size, codec, filters, columns): a rerun
    # with others would mix two kinds of shard in one dataset, so it is refused
    settings: dict = field(default_factory=dict)

    def names(self) -> list[str]:
        return [f"{i:0{self.shard_digits}d}" for i in range(self.num_shards)]

    def shard_size(self, name: str) -> int:
        return min(self.samples_per_shard, self.num_inputs - int(name) * self.samples_per_shard)


def make_plan(source: SourceSpec, output: str, samples_per_shard: int, settings: dict | None = None) -> Plan:
    """Read the existing plan of `output` (a ConfigError if it was made with other `settings`), or list
    the input and write one."""
    fs, root = filesystem(output)
    marker = join(root, "_plan", "plan.json")
    key_digits = len(str(samples_per_shard - 1))
    if fs.exists(marker):
        plan = Plan(**read_json(fs, marker))
        if (plan.input, plan.samples_per_shard) != (source.input, samples_per_shard):
            raise ConfigError(
                f"{output} was planned from input={plan.input} with samples_per_shard="
                f"{plan.samples_per_shard}; use another output folder, or the same values to resume")
        differ = sorted(k for k in settings or {} if k in plan.settings and plan.settings[k] != settings[k])
        if differ:
            key = differ[0]
            raise ConfigError(f"{output} holds shards made with {key}={plan.settings[key]!r}, not {settings[key]!r}; "
                              "use another output folder, or the same values to resume")
        log.info("resuming: %d inputs in %d shards already planned", plan.num_inputs, plan.num_shards)
        return plan
    fs.makedirs(join(root, "_plan"), exist_ok=True)
    # Shard names need a fixed width before the count is known: 5 digits (img2dataset's) is
    # 100k shards; a plan that outgrows it fails loudly rather than producing unsortable names.
    shard_digits, num_inputs, shard_id = 5, 0, 0
    rows = list_inputs(source)
    while chunk := list(itertools.islice(rows, samples_per_shard)):
        if shard_id >= 10 ** shard_digits:
            raise ConfigError(f"more than {10 ** shard_digits} shards: raise samples_per_shard")
        buf = io.BytesIO()
        pq.write_table(rows_to_table(chunk), buf)
        write_bytes_atomic(fs, plan_path(root, f"{shard_id:0{shard_digits}d}"), buf.getvalue())
        num_inputs += len(chunk)
        shard_id += 1
    if num_inputs == 0:
        raise ConfigError(f"no inputs found in {source.input}")
    plan = Plan(source.input, samples_per_shard, num_inputs, shard_id, shard_digits, key_digits, dict(settings or {}))
    write_json_atomic(fs, marker, asdict(plan))
    log.info("planned %d inputs in %d shards", num_inputs, shard_id)
    return plan
