"""Turning one planned shard into a committed output shard: fetch, check, resize, write.

Runs inside a Ray Data task that holds one CPU. `thread_count` threads fetch, since fetching waits
on the network; at most `decode_threads` of them decode, resize and encode at once, since many
CPU-bound threads on one core only contend for it (as img2dataset's downloader caps them). Two, not
one: the codecs release the GIL, and a second decoder fills a core that a neighbouring task leaves
idle while it starts or commits (measured: 0.5 s less of an 18 s bench run).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from common.progress import Reporter
from formats.images import ImageRejected, ResizeSpec, configure_decoders, process_image
from formats.shards import ShardWriter, is_committed, read_stats
from pipelines.sharding.dedup import DedupFailed
from pipelines.sharding.lists import Segment, read_rows
from pipelines.sharding.sources import FetchError, FetchSpec, fetch

log = logging.getLogger(__name__)


DOWNLOAD, RESIZE = "download", "resize"  # where an input failed: img2dataset's failed_to_download / _resize
# a sample's json in the tar, as img2dataset writes it (its ledger row, the status "success")
SAMPLE_META = ("url", "caption", "key", "status", "error_message", "width", "height", "original_width",
               "original_height", "exif", "sha256")


@dataclass(frozen=True)
class WorkerSpec:
    output: str
    resize: ResizeSpec
    key_digits: int  # digits of the in-shard index; the key is shard name + index
    thread_count: int = 16
    decode_threads: int = 2
    fetching: FetchSpec = FetchSpec()
    shard_retries: int = 2
    url_col: str = "url"  # columns (keys) of a URL list
    caption_col: str = "caption"
    additional_columns: tuple[str, ...] = ()  # saved into each sample's json and the ledger


def _load_one(row: dict, spec: WorkerSpec, dedup, decode_slots: threading.Semaphore) -> tuple[dict, object]:
    """One input to (ledger row, EncodedImage or None); never raises for a bad input. The row's `phase`
    (not a ledger column) says which of img2dataset's failure counts a failure falls in."""
    record = {**row.get("additional", {}), "url": row["location"], "caption": row["caption"],
              "retry_of": row.get("retry_of")}
    try:
        data = fetch(row["location"], spec.fetching)
        if row.get("caption_location"):
            record["caption"] = fetch(row["caption_location"], spec.fetching).decode("utf-8", "replace").strip()
        record["sha256"] = hashlib.sha256(data).hexdigest()
        if dedup is not None:
            first = dedup(record["sha256"], row["key"])
            if first != row["key"]:
                # as img2dataset's hash mismatch: a download that is not written
                return {**record, "status": "duplicate", "duplicate_of": first, "phase": DOWNLOAD}, None
        with decode_slots:
            image = process_image(data, spec.resize)
    except FetchError as e:
        return {**record, "status": e.reason, "error_message": str(e), "phase": DOWNLOAD}, None
    except ImageRejected as e:
        return {**record, "status": e.reason, "error_message": str(e), "phase": RESIZE}, None
    except DedupFailed:  # not the input's fault: the shard fails and is redone, no image is marked
        raise
    except Exception as e:  # an input must never fail its shard: record anything unforeseen
        return {**record, "status": "error", "error_message": f"{type(e).__name__}: {e}", "phase": RESIZE}, None
    record.update(status="success", width=image.size[0], height=image.size[1],
                  original_width=image.original_size[0], original_height=image.original_size[1], exif=image.exif)
    return record, image


def _write_shard(name: str, segments: list[Segment], spec: WorkerSpec, dedup, progress: Reporter | None) -> dict:
    rows = [row for seg in segments for row in read_rows(seg, spec.url_col, spec.caption_col, spec.additional_columns)]
    for i, row in enumerate(rows):
        row["key"] = f"{name}{i:0{spec.key_digits}d}"
    started = time.time()
    writer = ShardWriter(spec.output, name, additional=spec.additional_columns)
    reasons: Counter = Counter()
    phases: Counter = Counter()
    try:
        decode_slots = threading.Semaphore(spec.decode_threads)
        with ThreadPoolExecutor(spec.thread_count) as pool:
            for row, (record, image) in zip(rows, pool.map(lambda r: _load_one(r, spec, dedup, decode_slots), rows)):
                record["key"] = row["key"]
                reasons[record["status"]] += 1
                phases[record.get("phase")] += 1
                if progress:
                    progress.add()
                writer.add_ledger_row(record)
                if image is not None:
                    # img2dataset's per-sample json, the saved input columns with their own types
                    meta = {k: record.get(k) for k in (*SAMPLE_META, *spec.additional_columns)}
                    writer.add_sample(row["key"], image.data, image.extension, meta, record["caption"])
        ended = time.time()
        stats = {
            "shard": name,
            "num_inputs": len(rows),
            "num_samples": reasons["success"],
            "failures": {r: n for r, n in sorted(reasons.items()) if r != "success"},
            "start_time": started,
            "end_time": ended,
            "seconds": round(ended - started, 3),
            # img2dataset's keys, for the scripts and dashboards that read its _stats.json
            "count": len(rows),
            "successes": reasons["success"],
            "failed_to_download": phases[DOWNLOAD],
            "failed_to_resize": phases[RESIZE],
            "duration": ended - started,
            "status_dict": dict(reasons.most_common()),
        }
        writer.commit(stats)
    except BaseException:
        writer.abort()
        raise
    finally:
        if progress:
            progress.flush()
    return stats


def process_shard(name: str, segments: list[Segment], spec: WorkerSpec, dedup=None,
                  progress: Reporter | None = None) -> dict:
    """Write shard `name` (the input rows of `segments`, the plan's) unless already committed; returns
    its stats with a `status` field. `progress` hears of each input as it is written."""
    configure_decoders(spec.resize.max_image_pixels)
    if is_committed(spec.output, name):
        return {**read_stats(spec.output, name), "status": "skipped"}
    for attempt in range(spec.shard_retries + 1):
        try:
            return {**_write_shard(name, segments, spec, dedup, progress), "status": "written"}
        except Exception as e:  # storage hiccups: the shard is redone whole, never half-published
            log.warning("shard %s attempt %d failed: %s", name, attempt + 1, e)
            error = f"{type(e).__name__}: {e}"
    return {"shard": name, "status": "failed", "error": error, "num_inputs": 0, "num_samples": 0, "failures": {}}
