"""Where inputs come from: folders and fsspec prefixes, or URL lists (txt, csv, parquet).

`list_inputs` streams `(location, caption)` rows in a deterministic order; `fetch` returns the
bytes of one location, over http(s) with timeouts and retries, or through fsspec.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common.storage import filesystem
from formats.images import INPUT_EXTENSIONS

URL_LIST_FORMATS = (".txt", ".csv", ".parquet")


@dataclass(frozen=True)
class SourceSpec:
    input: str
    url_col: str = "url"
    caption_col: str = "caption"
    extensions: tuple[str, ...] = INPUT_EXTENSIONS


class FetchError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _is_url_list(path: str) -> bool:
    return path.lower().endswith(URL_LIST_FORMATS)


class InputRow(NamedTuple):
    location: str
    caption: str | None = None  # inline caption from a URL list
    caption_location: str | None = None  # sibling .txt file of a folder input, read by the worker


def _folder_rows(spec: SourceSpec) -> Iterator[InputRow]:
    fs, root = filesystem(spec.input)
    if not fs.exists(root):
        raise FileNotFoundError(f"input {spec.input} does not exist")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    files = sorted(fs.find(root))
    captions = {f.rsplit(".", 1)[0] for f in files if f.endswith(".txt")}
    for path in files:
        if not path.lower().endswith(spec.extensions):
            continue
        stem = path.rsplit(".", 1)[0]
        yield InputRow(prefix + path, None, prefix + stem + ".txt" if stem in captions else None)


def _table_rows(spec: SourceSpec) -> Iterator[InputRow]:
    lower = spec.input.lower()
    with fsspec.open(spec.input, "rb") as fh:
        if lower.endswith(".txt"):
            for line in fh:
                url = line.decode("utf-8", "replace").strip()
                if url:
                    yield InputRow(url)
            return
        table = pq.read_table(fh) if lower.endswith(".parquet") else pacsv.read_csv(fh)
    if spec.url_col not in table.column_names:
        raise ValueError(f"{spec.input} has no column {spec.url_col!r} (columns: {table.column_names})")
    urls = table.column(spec.url_col).to_pylist()
    has_caption = spec.caption_col in table.column_names
    captions = table.column(spec.caption_col).to_pylist() if has_caption else [None] * len(urls)
    for url, caption in zip(urls, captions):
        yield InputRow(str(url), None if caption is None else str(caption))


def list_inputs(spec: SourceSpec) -> Iterator[InputRow]:
    """Every input in a stable order: sorted paths for folders, file order for URL lists."""
    return _table_rows(spec) if _is_url_list(spec.input) else _folder_rows(spec)


# img2dataset's default: the X-Robots-Tag directives by which a site opts its images out of AI use
DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


@dataclass(frozen=True)
class FetchSpec:
    timeout_s: float = 10.0  # each connect and read
    retries: int = 2  # extra tries after a transient failure (timeout, network, 429, 5xx)
    deadline_s: float = 60.0  # the whole fetch of one input, tries included: a slow drip cannot hold a thread
    user_agent_token: str = "clips4"  # our name in the User-Agent and in X-Robots-Tag ("clips4: noai")
    disallowed_directives: tuple[str, ...] = DISALLOWED_DIRECTIVES  # () = X-Robots-Tag not honoured


def opted_out(values: list[str], token: str, disallowed: tuple[str, ...]) -> bool:
    """Whether X-Robots-Tag header values forbid our use: "noai, noindex" speaks to every agent,
    "clips4: noai" to the one named only."""
    for value in values:
        agent, _, directives = value.rpartition(":")
        if agent.strip() and agent.strip().lower() != token.lower():
            continue
        if {d.strip().lower() for d in directives.split(",")} & set(disallowed):
            return True
    return False


def _fetch_http(url: str, spec: FetchSpec, deadline: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": f"{spec.user_agent_token}-shard/0.1"})
    with urllib.request.urlopen(request, timeout=min(spec.timeout_s, max(0.01, deadline - time.monotonic()))) as response:
        if spec.disallowed_directives and opted_out(response.headers.get_all("X-Robots-Tag") or [],
                                                    spec.user_agent_token, spec.disallowed_directives):
            raise FetchError("opted_out", "X-Robots-Tag forbids AI use")  # before reading the body
        chunks = []
        # read1 returns what one read gives: the deadline is checked however slowly the bytes come
        while chunk := response.read1(1 << 16):
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError(f"deadline of {spec.deadline_s:g} s passed")
        return b"".join(chunks)


def fetch(location: str, spec: FetchSpec) -> bytes:
    """The bytes at `location`; raises `FetchError` after `spec.retries` extra tries on transient errors,
    or once `spec.deadline_s` has passed."""
    deadline = time.monotonic() + spec.deadline_s
    for attempt in range(spec.retries + 1):
        try:
            if location.startswith(("http://", "https://")):
                return _fetch_http(location, spec, deadline)
            with fsspec.open(location, "rb") as fh:
                return fh.read()
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code != 429:
                raise FetchError(f"http_{e.code}") from None
            error = FetchError(f"http_{e.code}")
        except FileNotFoundError as e:
            raise FetchError("not_found", str(e)) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
            timed_out = isinstance(e, TimeoutError) or "timed out" in str(e)
            error = FetchError("timeout" if timed_out else "network", str(e))
        pause = 0.2 * 2 ** attempt
        if attempt == spec.retries or time.monotonic() + pause >= deadline:
            break
        time.sleep(pause)
    raise error


def rows_to_table(rows: list[InputRow]) -> pa.Table:
    return pa.table({name: [getattr(r, name) for r in rows] for name in InputRow._fields},
                    schema=pa.schema([(name, pa.string()) for name in InputRow._fields]))
