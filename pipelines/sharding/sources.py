"""Where inputs come from: a folder of images (local or any fsspec prefix), or URL lists (one file, a
folder of them, or a glob; formats in pipelines.sharding.lists); and `fetch`, the bytes of one
location over http(s) (timeouts, retries, a deadline, X-Robots-Tag) or through fsspec.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Iterator

import fsspec

from common.config import ConfigError
from common.storage import filesystem
from formats.images import INPUT_EXTENSIONS
from pipelines.sharding.lists import LIST_FORMATS, list_format


@dataclass(frozen=True)
class SourceSpec:
    input: str  # a folder of images, a URL list, a folder of URL lists, or a glob of them
    url_col: str = "url"
    caption_col: str = "caption"
    extensions: tuple[str, ...] = INPUT_EXTENSIONS
    input_format: str = ""  # a value of lists.LIST_FORMATS; "" = each file's extension says
    additional_columns: tuple[str, ...] = ()  # list columns to save: each list must have them


class FetchError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _url(fs, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def url_lists(spec: SourceSpec) -> list[tuple[str, str]] | None:
    """The URL list files the input names with their formats, sorted; None when it is a folder of images.

    A list file's name says its format (lists.LIST_FORMATS) unless `input_format` does (a file named
    otherwise; in a folder or glob, only lists of that format); a glob (`s3://b/urls/*.parquet`) or a
    folder holding list files and no image names every list in it. A folder with images is a folder
    of images (its .txt files are their captions)."""
    fs, root = filesystem(spec.input)
    if any(c in spec.input for c in "*?["):
        paths = sorted(fs.glob(root))
    elif list_format(root) or (spec.input_format and fs.isfile(root)):
        if not fs.exists(root):
            raise ConfigError(f"input {spec.input} does not exist")
        return [(spec.input, spec.input_format or list_format(root))]
    else:
        if not fs.exists(root):
            raise ConfigError(f"input {spec.input} does not exist")
        paths = sorted(fs.find(root))
        if any(p.lower().endswith(spec.extensions) for p in paths):
            return None
    lists = [(_url(fs, p), list_format(p)) for p in paths
             if list_format(p) and list_format(p) == (spec.input_format or list_format(p))]
    if not lists:
        raise ConfigError(f"no images and no URL lists ({', '.join(LIST_FORMATS)}) in {spec.input}")
    return lists


def folder_rows(spec: SourceSpec) -> Iterator[dict]:
    """The images of a folder in sorted order, each with its sibling NAME.txt caption's location."""
    fs, root = filesystem(spec.input)
    files = sorted(fs.find(root))
    captions = {f.rsplit(".", 1)[0] for f in files if f.endswith(".txt")}
    for path in files:
        if path.lower().endswith(spec.extensions):
            stem = path.rsplit(".", 1)[0]
            yield {"location": _url(fs, path), "caption_location": _url(fs, stem + ".txt") if stem in captions else None}


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
