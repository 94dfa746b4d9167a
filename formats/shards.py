"""Writing one output shard (images, or the embed job's sidecars): tar, parquet ledger, stats commit marker.

A shard is complete exactly when `NNNNN_stats.json` exists. The tar and ledger are written first,
each atomically, so a crash leaves either nothing or files that a rerun overwrites.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import filesystem, join, upload_file_atomic, write_bytes_atomic, write_json_atomic

LEDGER_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("location", pa.string()),
    ("status", pa.string()),  # "success", or the reason the input was not written
    ("error", pa.string()),
    ("caption", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("sha256", pa.string()),
    ("duplicate_of", pa.string()),
])


def shard_name(shard_id: int, digits: int) -> str:
    return f"{shard_id:0{digits}d}"


def is_committed(output: str, name: str) -> bool:
    fs, root = filesystem(output)
    return fs.exists(join(root, f"{name}_stats.json"))


@dataclass
class ShardWriter:
    """Collects samples for one shard in a local temp tar, then publishes tar, ledger and stats."""

    output: str
    name: str
    rows: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self._tmp = tempfile.NamedTemporaryFile(suffix=".tar", delete=False)
        # mtime 0 and sorted member order make a rerun byte-identical
        self._tar = tarfile.open(fileobj=self._tmp, mode="w")

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

    def add_ledger_row(self, row: dict) -> None:
        self.rows.append({name: row.get(name) for name in LEDGER_SCHEMA.names})

    def commit(self, stats: dict) -> None:
        self._tar.close()
        self._tmp.close()
        fs, root = filesystem(self.output)
        try:
            upload_file_atomic(fs, self._tmp.name, join(root, f"{self.name}.tar"))
        finally:
            os.unlink(self._tmp.name)
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(self.rows, schema=LEDGER_SCHEMA), buf)
        write_bytes_atomic(fs, join(root, f"{self.name}.parquet"), buf.getvalue())
        write_json_atomic(fs, join(root, f"{self.name}_stats.json"), stats)

    def abort(self) -> None:
        self._tar.close()
        self._tmp.close()
        if os.path.exists(self._tmp.name):
            os.unlink(self._tmp.name)
