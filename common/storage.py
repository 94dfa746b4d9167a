"""Storage through fsspec: every location is a `str` URI, local path or `s3://...` alike.

Writes are atomic: a reader never sees a half-written object. Locally a file is written under a
temporary name and renamed; on object stores an upload only becomes visible once it completes.
"""

from __future__ import annotations

import glob
import json
import os
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for `url` and the path inside it, without a trailing slash."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/") or path


def arrow_filesystem(url: str) -> tuple[str, Any]:
    """(path, pyarrow filesystem) for Ray's readers and writers (Ray Data, Ray Train): a local path
    as it is with None (their own local filesystem); a URL through fsspec's filesystem, so its
    endpoint settings (AWS_ENDPOINT_URL, ...) hold there too."""
    if "://" not in url:
        return url, None
    import pyarrow.fs

    fs, path = filesystem(url)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


TMP_MARK = ".tmp-"  # PATH.tmp-XXXXXXXX: a local write in progress, renamed to PATH when complete


def _local_tmp(path: str) -> str:
    """A sibling temp name, its folder created: object stores need neither."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return f"{path}{TMP_MARK}{uuid.uuid4().hex[:8]}"


def remove_leftovers(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Delete what a killed writer of `path` left: its local temp files (object stores leave none)."""
    if isinstance(fs, LocalFileSystem):
        for leftover in fs.glob(glob.escape(path) + TMP_MARK + "*"):
            fs.rm_file(leftover)


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    if isinstance(fs, LocalFileSystem):
        tmp = _local_tmp(path)
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def move_file_atomic(fs: fsspec.AbstractFileSystem, local_path: str, path: str) -> None:
    """Move a finished local file to `path`; the destination appears complete or not at all.

    Locally a rename, so `local_path` must be on the destination's filesystem (beside it, say); to
    an object store an upload, which only appears once complete, then the local file is removed."""
    if isinstance(fs, LocalFileSystem):
        os.replace(local_path, path)
    else:
        try:
            fs.put_file(local_path, path)
        finally:
            os.unlink(local_path)


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    write_bytes_atomic(fs, path, json.dumps(obj, indent=1, sort_keys=True).encode())


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    return json.loads(fs.cat_file(path))


def copy_to_local(url: str, local_path: str) -> None:
    """Copy the file at `url` (any fsspec URL) to `local_path`."""
    fs, path = filesystem(url)
    fs.get_file(path, local_path)
