"""URL lists in the formats img2dataset reads (parquet, csv, tsv, jsonl, txt): counted without loading
them, and read back by row range where the shard task runs.

Planning needs only each file's row count: parquet's footer holds it; a text list is streamed once,
counting lines, and keeps a sparse line index (the byte offset of every LINE_INDEX_EVERY-th row), so
a task seeks near its first row instead of reading the file from the top. A csv or tsv row is one
line (a field holding a newline is not supported) after one header line.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common.config import ConfigError
from common.storage import filesystem

LIST_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".txt": "txt"}
# Lists the plan writes itself, parquet: a folder of images (`location`, `caption_location`), and a
# retry pass's rows (`location`, `caption`, `retry_of`). GAP stands for rows that are no input: a
# retry pass starts on a shard of its own.
PATHS, RETRY, GAP = "paths", "retry", "gap"
LINE_INDEX_EVERY = 4096
_CHUNK = 1 << 22  # 4 MB a read: the scan threads together hold tens of MB whatever the file sizes


def list_format(path: str) -> str | None:
    return next((fmt for ext, fmt in LIST_FORMATS.items() if path.lower().endswith(ext)), None)


@dataclass(frozen=True)
class ListFile:
    path: str  # a URL fsspec opens
    format: str  # a value of LIST_FORMATS, or PATHS
    num_rows: int
    line_offsets: tuple[int, ...] = ()  # text formats: byte offset of rows 0, K, 2K, ... (K = LINE_INDEX_EVERY)


@dataclass(frozen=True)
class Segment:
    """Rows [start, stop) of one list file, and where a reader seeks to reach `start`."""

    path: str
    format: str
    start: int
    stop: int
    offset: int = 0  # text: the byte offset of an indexed row at or before `start`
    skip: int = 0  # text: lines to pass over from there


def scan(path: str, fmt: str, url_col: str, additional: tuple[str, ...] = ()) -> ListFile:
    """The row count (and a text list's line index) of the list file at `path`; a ConfigError when it
    has no `url_col`, found from what the count reads anyway (parquet's footer, the header line), so
    a list without its URL column stops the job at planning, not in every shard task."""
    fs, local = filesystem(path)
    with fs.open(local, "rb") as fh:
        if fmt == "parquet":
            parquet = pq.ParquetFile(fh)
            _check_columns(path, url_col, additional, parquet.schema_arrow.names)
            return ListFile(path, fmt, parquet.metadata.num_rows)
        first = fh.readline()
        if fmt in ("csv", "tsv"):
            _check_columns(path, url_col, additional, [c.strip().strip('"') for c in first.decode(
                "utf-8-sig", "replace").rstrip("\r\n").split("\t" if fmt == "tsv" else ",")])
        elif fmt == "jsonl" and first.strip():
            try:
                record = json.loads(first)
            except ValueError:
                raise ConfigError(f"{path}: its first line is not JSON") from None
            _check_columns(path, url_col, additional, list(record) if isinstance(record, dict) else [])
        elif fmt == "txt" and additional:
            raise ConfigError(f"{path} is a plain list of URLs: it has no columns to save ({', '.join(additional)})")
        fh.seek(0)
        return ListFile(path, fmt, *_count_lines(fh, header=fmt in ("csv", "tsv")))


def _check_columns(path: str, url_col: str, additional: tuple[str, ...], columns: list[str]) -> None:
    if url_col not in columns:
        raise ConfigError(f"{path} has no column {url_col!r} (columns: {', '.join(columns) or 'none'}); "
                          "name the URL column with --url-col")
    missing = [c for c in additional if c not in columns]
    if missing:
        raise ConfigError(f"{path} has no column {missing[0]!r} to save (columns: {', '.join(columns)})")


def _count_lines(fh, header: bool) -> tuple[int, tuple[int, ...]]:
    """(rows, byte offsets of every LINE_INDEX_EVERY-th row): a row is a line, the header excluded."""
    offsets: list[np.ndarray] = []
    rows = -1 if header else 0  # lines seen so far, as row numbers (the header is row -1)
    position, last = 0, b"\n"
    while chunk := fh.read(_CHUNK):
        starts = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + position + 1  # the lines after these
        if last == b"\n":  # the chunk opens a line
            starts = np.concatenate([[position], starts])
        position += len(chunk)
        last = chunk[-1:]
        starts = starts[starts < position] if last == b"\n" else starts  # a final newline opens no line
        numbers = np.arange(rows, rows + len(starts))
        offsets.append(starts[(numbers >= 0) & (numbers % LINE_INDEX_EVERY == 0)])
        rows += len(starts)
    index = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
    return max(rows, 0), tuple(int(o) for o in index)


def segment(file: ListFile, start: int, stop: int) -> Segment:
    if not file.line_offsets:
        return Segment(file.path, file.format, start, stop)
    anchor = start // LINE_INDEX_EVERY
    return Segment(file.path, file.format, start, stop, file.line_offsets[anchor], start - anchor * LINE_INDEX_EVERY)


def read_rows(seg: Segment, url_col: str, caption_col: str, additional: tuple[str, ...] = ()) -> list[dict]:
    """Rows [start, stop) of a list file as {"location", "caption", "caption_location", "additional"} dicts;
    `additional` maps the columns to save (img2dataset's save_additional_columns) to the row's values."""
    fs, local = filesystem(seg.path)
    count = seg.stop - seg.start
    with fs.open(local, "rb") as fh:
        if seg.format in ("parquet", PATHS, RETRY):
            table = _parquet_rows(pq.ParquetFile(fh), seg.start, seg.stop)
            if seg.format == PATHS:
                return [{"location": r["location"], "caption": None, "caption_location": r["caption_location"],
                         "additional": {}} for r in table.to_pylist()]
            if seg.format == RETRY:  # the ledger's rows: the saved columns come with them
                return [{"location": r["location"], "caption": r["caption"], "retry_of": r["retry_of"],
                         "caption_location": None, "additional": {c: r.get(c) for c in additional}}
                        for r in table.to_pylist()]
            return _table_rows(table, url_col, caption_col, seg.path, additional)
        header = fh.readline() if seg.format in ("csv", "tsv") else b""
        fh.seek(seg.offset)
        for _ in range(seg.skip):
            fh.readline()
        lines = [fh.readline() for _ in range(count)]
    if seg.format == "txt":
        return [{"location": line.decode("utf-8", "replace").strip(), "caption": None, "caption_location": None,
                 "additional": {}} for line in lines]
    if seg.format == "jsonl":
        records = [json.loads(line) if line.strip() else {} for line in lines]
        if records and not any(url_col in r for r in records):
            raise ValueError(f"{seg.path} has no key {url_col!r} in rows {seg.start}-{seg.stop}")
        return [{"location": str(r.get(url_col, "")), "caption": _text(r.get(caption_col)), "caption_location": None,
                 "additional": {c: r.get(c) for c in additional}} for r in records]
    delimiter = "\t" if seg.format == "tsv" else ","
    table = pacsv.read_csv(io.BytesIO(header + b"".join(lines)), parse_options=pacsv.ParseOptions(delimiter=delimiter),
                           convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    return _table_rows(table, url_col, caption_col, seg.path, additional)


def _parquet_rows(parquet: pq.ParquetFile, start: int, stop: int):
    """Rows [start, stop), reading only the row groups that hold them."""
    groups, first, row = [], None, 0
    for g in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(g).num_rows
        if row + size > start and row < stop:
            groups.append(g)
            first = row if first is None else first
        row += size
    return parquet.read_row_groups(groups).slice(start - (first or 0), stop - start)


def _table_rows(table, url_col: str, caption_col: str, path: str, additional: tuple[str, ...] = ()) -> list[dict]:
    if url_col not in table.column_names:
        raise ValueError(f"{path} has no column {url_col!r} (columns: {table.column_names})")
    urls = table.column(url_col).to_pylist()
    captions = table.column(caption_col).to_pylist() if caption_col in table.column_names else [None] * len(urls)
    saved = {c: table.column(c).to_pylist() if c in table.column_names else [None] * len(urls) for c in additional}
    return [{"location": "" if u is None else str(u), "caption": _text(c), "caption_location": None,
             "additional": {k: v[i] for k, v in saved.items()}} for i, (u, c) in enumerate(zip(urls, captions))]


def _text(value) -> str | None:
    return None if value is None else str(value)
