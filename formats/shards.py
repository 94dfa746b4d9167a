"""One shard on disk (images, or the embed job's sidecars): tar, parquet ledger, stats commit marker.

The owner of the shard layout: `NAME.tar`, `NAME.parquet` and `NAME_stats.json` are spelled here
and nowhere else. A shard is complete exactly when its stats file exists. The tar and ledger are
written first, each atomically, so a crash leaves either nothing or files that a rerun overwrites.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from common.storage import (
    filesystem,
    join,
    move_file_atomic,
    read_json,
    remove_leftovers,
    write_bytes_atomic,
    write_json_atomic,
)

# img2dataset's column names, so its users' scripts read ours: `url` (where the input came from: a URL,
# a file path, or for a sidecar its image shard), `error_message`, `exif` (tag name -> text, JSON).
# `status` is "success" or the reason, finer than img2dataset's two failure kinds (the stats count
# those too); duplicate_of and retry_of are ours.
LEDGER_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("url", pa.string()),
    ("status", pa.string()),  # "success", or the reason the input was not written
    ("error_message", pa.string()),
    ("caption", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("exif", pa.string()),
    ("sha256", pa.string()),
    ("duplicate_of", pa.string()),
    ("retry_of", pa.string()),  # a --retry-failed row: the key of the row whose transient failure it retries
])


STATS_SUFFIX = "_stats.json"  # NAME_stats.json: the shard's commit marker, written last
# Keys under which a shard sample may hold its image: what the shard job writes (formats.images.
# ENCODE_FORMATS) and the "jpeg" other img2dataset-style writers use.
SAMPLE_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def shard_name(shard_id: int, digits: int) -> str:
    return f"{shard_id:0{digits}d}"


def tar_name(name: str) -> str:
    return f"{name}.tar"


def ledger_name(name: str) -> str:
    return f"{name}.parquet"


def stats_path(root: str, name: str) -> str:
    return join(root, name + STATS_SUFFIX)


def is_committed(output: str, name: str) -> bool:
    fs, root = filesystem(output)
    return fs.exists(stats_path(root, name))


def read_stats(output: str, name: str) -> dict:
    fs, root = filesystem(output)
    return read_json(fs, stats_path(root, name))


def read_stats_of(output: str, names: list[str]) -> dict[str, dict]:
    """Name -> stats of committed shards `names`, LISTING_THREADS reads at a time (an object store
    answers each in tens of milliseconds: a killed run's last minute of shards, read in turn, would be
    most of a resume)."""
    if not names:
        return {}
    with ThreadPoolExecutor(min(LISTING_THREADS, len(names))) as pool:
        return dict(zip(names, pool.map(lambda name: read_stats(output, name), names)))


# A job's record of its committed shards (the shard job's manifest, the embed job's sidecar index) is
# rewritten this often during a run: a killed run's next start trusts it and looks only for the rest,
# a minute's work rather than everything since the start.
RECORD_EVERY_S = 60.0


@dataclass
class RecordClock:
    """When a job's record of committed shards is due again (every RECORD_EVERY_S seconds)."""

    written_at: float = field(default_factory=time.monotonic)

    def due(self) -> bool:
        if time.monotonic() - self.written_at < RECORD_EVERY_S:
            return False
        self.written_at = time.monotonic()
        return True


# An object store lists 1,000 names a request: 100k shards (300k objects) are 300 requests in turn.
# Listed by the names' first two digits (every shard name here and in img2dataset's layout starts
# with them), the pages come LISTING_THREADS at a time, and only prefixes that hold a name in doubt.
LISTING_THREADS = 16


def committed_names(output: str, names: Sequence[str], known: Collection[str] = ()) -> list[str]:
    """Which of shards `names` are committed under `output`, in their order.

    `known`: names that a record written after their commit lists (the shard job's manifest, the embed
    job's sidecar index); they count as committed without a look. The names in doubt are found from
    their stats markers, in one listing (an object store's by those names' two-digit prefixes, in
    parallel): a finished output with its record costs no listing at all, a killed run's only the
    prefixes it had not recorded. A shard taken out by hand is redone only once the record is gone."""
    known = set(known)
    doubt = [n for n in names if n not in known]
    found: set[str] = set()
    if doubt:
        fs, root = filesystem(output)
        # s3fs caches listings and answers `exists` from them: read fresh, and leave nothing cached that
        # would hide shards committed later
        fs.invalidate_cache(root)
        if isinstance(fs, LocalFileSystem) or "prefix" not in inspect.signature(fs.find).parameters:
            paths = fs.ls(root, detail=False)
        else:
            prefixes = sorted({n[:2] for n in doubt})
            with ThreadPoolExecutor(min(LISTING_THREADS, len(prefixes))) as pool:
                paths = [p for part in pool.map(lambda prefix: fs.find(root, maxdepth=1, prefix=prefix), prefixes)
                         for p in part]
        fs.invalidate_cache(root)
        found = {p.rsplit("/", 1)[-1][: -len(STATS_SUFFIX)] for p in paths if p.endswith(STATS_SUFFIX)}
    return [n for n in names if n in known or n in found]


def iter_samples(url: str, name: str) -> Iterator[dict]:
    """Samples of `NAME.tar` under `url` as webdataset dicts ({"__key__": ..., "jpg": bytes, ...}), in
    order, streamed: one sample's members in memory at a time, and a consumer that stops early stops
    the reading (the file closes with the generator)."""
    # webdataset imports torch (1-2 s): the shard job's workers and driver write tars and never need it
    import webdataset as wds

    fs, root = filesystem(url)
    with fs.open(join(root, tar_name(name)), "rb") as stream:
        yield from wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander([{"stream": stream, "url": name}]))


def read_samples(url: str, name: str) -> list[dict]:
    """Every sample of `NAME.tar` at once (a shard the caller needs whole); see iter_samples."""
    return list(iter_samples(url, name))


@dataclass
class ShardWriter:
    """Collects samples for one shard in a local temp tar, then publishes tar, ledger and stats."""

    output: str
    name: str
    rows: list[dict] = field(default_factory=list)
    additional: tuple[str, ...] = ()  # input columns saved in the ledger after its own (as text)

    def __post_init__(self):
        fs, root = filesystem(self.output)
        for path in (join(root, tar_name(self.name)), join(root, ledger_name(self.name)), stats_path(root, self.name)):
            remove_leftovers(fs, path)  # a killed earlier attempt at this shard
        self._staging = staging_path(self.output, self.name)
        self._file = open(self._staging, "wb")  # truncates a killed attempt's partial tar
        # mtime 0 and sorted member order make a rerun byte-identical
        self._tar = tarfile.open(fileobj=self._file, mode="w")

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def add_files(self, key: str, files: dict[str, bytes]) -> None:
        """One sample: `KEY.EXT` for every extension -> bytes, in the given order."""
        for extension, data in files.items():
            self._add(f"{key}.{extension}", data)

    def add_sample(self, key: str, image: bytes, extension: str, meta: dict, caption: str | None) -> None:
        files = {extension: image, "json": json.dumps(meta, sort_keys=True).encode()}
        self.add_files(key, files if caption is None else {**files, "txt": caption.encode()})

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([*LEDGER_SCHEMA, *((c, pa.string()) for c in self.additional if c not in LEDGER_SCHEMA.names)])

    def add_ledger_row(self, row: dict) -> None:
        ledger = {name: row.get(name) for name in LEDGER_SCHEMA.names}
        for c in self.additional:  # text: a column's type may differ between list files
            ledger.setdefault(c, None if row.get(c) is None else str(row[c]))
        self.rows.append(ledger)

    def commit(self, stats: dict) -> None:
        self._tar.close()
        self._file.close()
        fs, root = filesystem(self.output)
        move_file_atomic(fs, self._staging, join(root, tar_name(self.name)))
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), buf)
        write_bytes_atomic(fs, join(root, ledger_name(self.name)), buf.getvalue())
        write_json_atomic(fs, stats_path(root, self.name), stats)

    def abort(self) -> None:
        self._tar.close()
        self._file.close()
        if os.path.exists(self._staging):
            os.unlink(self._staging)


def staging_path(output: str, name: str) -> str:
    """Where NAME.tar is built before it is published, named so that a rerun of the shard overwrites
    what a killed attempt left: beside the output for a local folder (`NAME.tar.partial`, renamed
    when complete, never read as a shard), else in a local folder of this output's own."""
    fs, root = filesystem(output)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(root, exist_ok=True)
        return join(root, tar_name(name) + ".partial")
    folder = os.path.join(tempfile.gettempdir(), "clips4-staging", hashlib.sha1(output.encode()).hexdigest()[:12])
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, tar_name(name))
