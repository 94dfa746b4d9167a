"""A retry pass (`--retry-failed`): the rows whose fetch failed for a reason that may pass (a timeout, a
network error, 429, 5xx) are fetched again into new shards, with new ledgers and new keys.

The pass reads the ledgers of the shards not yet retried (a Ray Data job: they may be 100k files),
writes the rows to retry as parquet lists under `_plan/retry-NN/`, and appends them to the plan,
which records that those shards are retried: a row is retried once per pass, a new pass retries
only the previous pass's own transient failures, and a pass killed before the plan recorded it is
redone from the start. A pass's rows come in the order Ray Data read the ledgers, not the input's.
"""

from __future__ import annotations

import logging

import pyarrow.parquet as pq
import ray

from common.storage import arrow_filesystem, filesystem, join
from formats.shards import ledger_name
from pipelines.sharding.lists import RETRY, ListFile
from pipelines.sharding.plan import PLAN_DIR, Plan, extend_plan

log = logging.getLogger(__name__)

TRANSIENT = ("timeout", "network", "http_408", "http_429")  # and every http_5xx


def is_transient(status: str) -> bool:
    return status in TRANSIENT or (status.startswith("http_5") and len(status) == 8)


def _transient_rows(batch, additional: tuple[str, ...] = ()):
    """A ledger batch (pyarrow) -> its transient failures as retry rows: location, caption, retry_of and
    the saved input columns."""
    statuses = batch.column("status").to_pylist()
    keep = [is_transient(s or "") for s in statuses]
    rows = batch.filter(keep)
    return {"location": rows.column("url"), "caption": rows.column("caption"),
            "retry_of": rows.column("key"), **{c: rows.column(c) for c in additional}}


def retry_pass(output: str, plan: Plan) -> Plan:
    """The plan extended by one retry pass (unchanged when nothing is transient), shards to write included."""
    fs, root = filesystem(output)
    names = plan.names()[plan.retried_upto:]
    if not names:
        return plan
    number = len({f.path.rsplit("/", 2)[-2] for f in plan.files if f.format == RETRY})  # passes so far
    folder = join(root, PLAN_DIR, f"retry-{number:02d}")
    if fs.exists(folder):  # a pass killed before the plan recorded it: start it again
        fs.rm(folder, recursive=True)
    path, arrow_fs = arrow_filesystem(output)
    ledgers = [join(path, ledger_name(n)) for n in names]
    additional = tuple(plan.settings.get("save_additional_columns", ()))
    rows = ray.data.read_parquet(ledgers, filesystem=arrow_fs, columns=["key", "url", "caption", "status", *additional])
    rows = rows.map_batches(_transient_rows, batch_format="pyarrow", fn_kwargs={"additional": additional})
    out_path, out_fs = arrow_filesystem(join(output, PLAN_DIR, f"retry-{number:02d}"))
    rows.write_parquet(out_path, filesystem=out_fs)
    fs.invalidate_cache(folder)
    written = sorted(p for p in fs.ls(folder, detail=False) if p.endswith(".parquet")) if fs.exists(folder) else []
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    files = []
    for p in written:
        with fs.open(p, "rb") as fh:
            count = pq.ParquetFile(fh).metadata.num_rows
        if count:
            files.append(ListFile(p if protocol in ("file", "local") else f"{protocol}://{p}", RETRY, count))
    log.info("retry pass %d: %d rows to fetch again from %d shards", number, sum(f.num_rows for f in files), len(names))
    return extend_plan(output, plan, files)
