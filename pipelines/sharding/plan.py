"""Splitting the input into shards once, so every rerun sees the same keys in the same shards.

The plan is small whatever the input: the list files with their row counts (and text lists' sparse
line index) in `OUTPUT/_plan/files.parquet`, then `plan.json` last. Shard N holds global rows
[N * samples_per_shard, (N + 1) * samples_per_shard) across the files in order, so which rows a
shard holds is arithmetic; its task reads them itself (lists.read_rows). Planning reads parquet
footers and streams text lists once, in parallel, holding no rows: driver memory does not grow with
the input. A folder of images is listed once into parquet lists under `_plan/inputs/`.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import io
import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from common.config import ConfigError
from common.storage import filesystem, join, read_json, write_bytes_atomic, write_json_atomic
from pipelines.sharding.lists import GAP, PATHS, ListFile, Segment, scan, segment
from pipelines.sharding.sources import SourceSpec, folder_rows, url_lists

log = logging.getLogger(__name__)

PLAN_VERSION = 2  # 1: one parquet of rows per shard
PLAN_DIR, PLAN_JSON, FILES_TABLE = "_plan", "plan.json", "files.parquet"
FOLDER_LIST_ROWS = 1_000_000  # images per parquet list written for a folder input
SCAN_THREADS = 16  # list files scanned at once (footer reads and line counts are I/O bound)


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
    version: int = PLAN_VERSION
    retried_upto: int = 0  # shards before this one have had their transient failures retried
    files: tuple[ListFile, ...] = ()

    def names(self) -> list[str]:
        return [f"{i:0{self.shard_digits}d}" for i in range(self.num_shards)]

    def shard_size(self, name: str) -> int:
        return sum(seg.stop - seg.start for seg in self.segments(name))

    @functools.cached_property
    def _first_rows(self) -> list[int]:
        return [0, *itertools.accumulate(f.num_rows for f in self.files)]

    def segments(self, name: str) -> list[Segment]:
        """The row ranges of the list files that shard `name` holds, in order."""
        first = self._first_rows
        start = int(name) * self.samples_per_shard
        stop = min(start + self.samples_per_shard, first[-1])
        out = []
        for i in range(bisect.bisect_right(first, start) - 1, len(self.files)):
            if first[i] >= stop:
                break
            lo, hi = max(start, first[i]) - first[i], min(stop, first[i + 1]) - first[i]
            if hi > lo and self.files[i].format != GAP:
                out.append(segment(self.files[i], lo, hi))
        return out


def files_table(files: tuple[ListFile, ...]) -> bytes:
    table = pa.table({"path": [f.path for f in files], "format": [f.format for f in files],
                      "num_rows": pa.array([f.num_rows for f in files], pa.int64()),
                      "line_offsets": pa.array([list(f.line_offsets) for f in files], pa.list_(pa.int64()))})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def read_files_table(data: bytes) -> tuple[ListFile, ...]:
    return tuple(ListFile(r["path"], r["format"], r["num_rows"], tuple(r["line_offsets"]))
                 for r in pq.read_table(io.BytesIO(data)).to_pylist())


def load_plan(output: str) -> Plan | None:
    fs, root = filesystem(output)
    marker = join(root, PLAN_DIR, PLAN_JSON)
    if not fs.exists(marker):
        return None
    saved = read_json(fs, marker)
    if saved.get("version", 1) != PLAN_VERSION:
        raise ConfigError(f"{output} was planned by an older version of the shard job; use another output folder")
    return Plan(**{**saved, "files": read_files_table(fs.cat_file(join(root, PLAN_DIR, FILES_TABLE)))})


def _folder_lists(spec: SourceSpec, root: str, fs) -> list[ListFile]:
    """A folder input's images as parquet lists under `_plan/inputs/` (FOLDER_LIST_ROWS each)."""
    files, rows = [], folder_rows(spec)
    while chunk := list(itertools.islice(rows, FOLDER_LIST_ROWS)):
        path = join(root, PLAN_DIR, "inputs", f"{len(files):05d}.parquet")
        buffer = io.BytesIO()
        pq.write_table(pa.table({"location": [r["location"] for r in chunk],
                                 "caption_location": pa.array([r["caption_location"] for r in chunk], pa.string())}),
                       buffer)
        write_bytes_atomic(fs, path, buffer.getvalue())
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        files.append(ListFile(path if protocol in ("file", "local") else f"{protocol}://{path}", PATHS, len(chunk)))
    return files


def make_plan(source: SourceSpec, output: str, samples_per_shard: int, settings: dict | None = None) -> Plan:
    """Read the existing plan of `output` (a ConfigError if it was made with other `settings`), or scan
    the input and write one."""
    fs, root = filesystem(output)
    plan = load_plan(output)
    if plan is not None:
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
    lists = url_lists(source)
    if lists is None:
        files = tuple(_folder_lists(source, root, fs))
    else:
        with ThreadPoolExecutor(SCAN_THREADS) as pool:
            files = tuple(f for f in pool.map(lambda found: scan(*found, source.url_col, source.additional_columns), lists)
                          if f.num_rows)
    num_inputs = sum(f.num_rows for f in files)
    if num_inputs == 0:
        raise ConfigError(f"no inputs found in {source.input}")
    # Shard names need a fixed width before the count is known: 5 digits (img2dataset's) is
    # 100k shards; a plan that outgrows it fails loudly rather than producing unsortable names.
    shard_digits, num_shards = 5, -(-num_inputs // samples_per_shard)
    if num_shards > 10 ** shard_digits:
        raise ConfigError(f"{num_inputs} inputs make {num_shards} shards, more than {10 ** shard_digits}: "
                          "raise samples_per_shard")
    plan = Plan(source.input, samples_per_shard, num_inputs, num_shards, shard_digits,
                len(str(samples_per_shard - 1)), dict(settings or {}), files=files)
    save_plan(output, plan)
    log.info("planned %d inputs from %d list files in %d shards", num_inputs, len(files), num_shards)
    return plan


def save_plan(output: str, plan: Plan) -> None:
    """The list table first, plan.json last: a plan.json always describes files the table holds."""
    fs, root = filesystem(output)
    write_bytes_atomic(fs, join(root, PLAN_DIR, FILES_TABLE), files_table(plan.files))
    write_json_atomic(fs, join(root, PLAN_DIR, PLAN_JSON),
                      {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.name != "files"})


def extend_plan(output: str, plan: Plan, retry_files: list[ListFile]) -> Plan:
    """The plan with a retry pass's lists appended, starting on a new shard (a gap pads the last one),
    and every shard so far marked retried; saved before any of the new shards is written."""
    added = sum(f.num_rows for f in retry_files)
    pad = plan.num_shards * plan.samples_per_shard - sum(f.num_rows for f in plan.files) if added else 0
    num_shards = plan.num_shards + -(-added // plan.samples_per_shard)
    if num_shards > 10 ** plan.shard_digits:
        raise ConfigError(f"a retry pass would make {num_shards} shards, more than {10 ** plan.shard_digits}")
    files = plan.files + ((ListFile("", GAP, pad),) if pad else ()) + tuple(retry_files)
    extended = dataclasses.replace(plan, num_inputs=plan.num_inputs + added, num_shards=num_shards,
                                   retried_upto=plan.num_shards, files=files)
    save_plan(output, extended)
    return extended
