"""Raw images (folders, object storage, URL lists) to WebDataset tar shards, as a Ray Data job.

    python pipelines/shard.py --input data/raw --output data/shards
    python pipelines/shard.py --input s3://bucket/urls.parquet --output s3://bucket/shards --dedup true
    ray job submit --working-dir . -- python pipelines/shard.py --input ... --output ...

Output (img2dataset's layout): `00000.tar` (KEY.jpg, KEY.json, KEY.txt), `00000.parquet` (one
ledger row per input, failures included), `00000_stats.json` (written last: the shard is
complete), `manifest.json`. A rerun skips complete shards and redoes the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

# Run as a file (`python pipelines/shard.py`, as under `ray job submit`): this checkout's packages,
# not an installed copy of them.
if not __package__:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray

from common.config import ConfigError, job_config
from common.progress import Progress
from common.ray_utils import init_ray
from formats.images import ENCODE_FORMATS, INPUT_EXTENSIONS, RESIZE_MODES, ResizeSpec
from formats.manifest import committed_counts, recorded_counts, write_manifest
from formats.shards import LEDGER_SCHEMA, RecordClock, committed_names
from pipelines.sharding.dedup import start_dedup
from pipelines.sharding.lists import LIST_FORMATS, Segment
from pipelines.sharding.plan import Plan, make_plan
from pipelines.sharding.retry import retry_pass
from pipelines.sharding.sources import DISALLOWED_DIRECTIVES, FetchSpec, SourceSpec
from pipelines.sharding.worker import WorkerSpec, process_shard

log = logging.getLogger("shard")


@dataclass(frozen=True, kw_only=True)
class ShardConfig(ResizeSpec):
    """The shard job's settings: where from and to, how to split and fetch, and (inherited from
    ResizeSpec, the flags --image-size, --resize-mode, ...) what each written image looks like."""

    input: str = field(metadata={"aliases": ("url_list",), "help": (
        "folder of images (local or s3://...), or URL lists: a .parquet, .csv, .tsv, .jsonl or .txt file, a folder "
        "of them or a glob")})
    output: str = field(metadata={"aliases": ("output_folder",), "help": "local folder or fsspec prefix for the shards"})
    input_format: str = field(default="", metadata={
        "help": "the URL lists' format (parquet/csv/tsv/jsonl/txt); empty = each file's extension says"})
    output_format: str = field(default="webdataset", metadata={
        "help": "the container, as img2dataset's: webdataset (tar shards); the image codec is --encode-format"})
    url_col: str = "url"
    caption_col: str = "caption"
    save_additional_columns: tuple[str, ...] = field(default=(), metadata={
        "help": "input list columns copied into each sample's json (their own types) and the ledger (as text), "
                "as img2dataset's"})
    extensions: tuple[str, ...] = INPUT_EXTENSIONS
    samples_per_shard: int = 10_000
    dedup: bool = field(default=False, metadata={"help": "keep one copy of identical files (sha256)"})
    dedup_actors: int = field(default=4, metadata={"help": "actors sharing the hashes (memory and claims)"})
    thread_count: int = field(default=16, metadata={"help": "fetching threads per shard task"})
    decode_threads: int = field(default=2, metadata={"help": "of those, how many decode/resize/encode at once"})
    timeout_s: float = field(default=10.0, metadata={"help": "seconds for each connect and read of a URL"})
    retries: int = field(default=2, metadata={"help": "extra tries of a URL after a timeout, network error, 429 or 5xx"})
    deadline_s: float = field(default=60.0, metadata={"help": "seconds for one URL in all, tries included"})
    user_agent_token: str = field(default="clips4", metadata={"help": "our name to sites (User-Agent, X-Robots-Tag)"})
    disallowed_header_directives: tuple[str, ...] = field(default=DISALLOWED_DIRECTIVES, metadata={
        "help": "X-Robots-Tag directives that opt an image out (status opted_out), as img2dataset; empty = ignore them"})
    shard_retries: int = field(default=2, metadata={"help": "times a shard is redone whole after a storage error"})
    max_tasks: int = field(default=0, metadata={"help": "shard tasks at once; 0 = as many as the cluster gives, "
                                                        "growing as an autoscaler adds nodes"})
    cpus_per_task: float = field(default=1.0, metadata={"help": "CPUs each shard task asks Ray for"})
    num_cpus: int = field(default=0, metadata={"help": "CPUs for a local Ray; 0 = all (ignored when joining)"})
    plan_only: bool = field(default=False, metadata={"help": "write and summarise the plan, fetch nothing, start no Ray"})
    retry_failed: bool = field(default=False, metadata={
        "help": "after the shards are done, fetch the inputs that failed for a transient reason (timeout, network, "
                "429, 5xx) once more, into new shards with new keys"})

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.encode_format not in ENCODE_FORMATS:
            raise ConfigError(f"encode_format must be one of {', '.join(ENCODE_FORMATS)}, got {self.encode_format!r}")
        if self.output_format != "webdataset":
            hint = f" (the codec {self.output_format!r} is --encode-format)" if self.output_format in ENCODE_FORMATS else ""
            raise ConfigError(f"output_format is the container, as in img2dataset: only webdataset is written{hint}")
        taken = set(LEDGER_SCHEMA.names) | {self.url_col, self.caption_col}
        if taken & set(self.save_additional_columns):
            raise ConfigError(f"save_additional_columns: {sorted(taken & set(self.save_additional_columns))[0]!r} is "
                              "already a column of the ledger or the list's URL or caption")
        if self.input_format and self.input_format not in LIST_FORMATS.values():
            raise ConfigError(f"input_format must be one of {', '.join(LIST_FORMATS.values())} (or empty: by each "
                              f"file's extension), got {self.input_format!r}")
        for name in ("samples_per_shard", "image_size", "thread_count", "decode_threads", "dedup_actors"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_tasks < 0 or self.cpus_per_task <= 0:
            raise ConfigError("max_tasks must be >= 0 and cpus_per_task > 0")
        if min(self.retries, self.shard_retries) < 0 or self.timeout_s <= 0 or self.deadline_s <= 0:
            raise ConfigError("retries and shard_retries must be >= 0, timeout_s and deadline_s > 0")
        # normalised once, while the config is built: directives compare lower-case
        object.__setattr__(self, "disallowed_header_directives",
                           tuple(d.strip().lower() for d in self.disallowed_header_directives if d.strip()))
        if not 1 <= self.encode_quality <= 100:
            raise ConfigError(f"encode_quality must be in 1..100, got {self.encode_quality}")
        if self.max_aspect_ratio < 1:
            raise ConfigError(f"max_aspect_ratio must be at least 1, got {self.max_aspect_ratio}")
        # normalised once, while the config is built (frozen after): ".JPG" and "jpg" both mean ".jpg"
        object.__setattr__(self, "extensions", tuple(e if e.startswith(".") else "." + e
                                                     for e in (x.lower() for x in self.extensions)))

    def worker_spec(self, key_digits: int) -> WorkerSpec:
        resize = ResizeSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ResizeSpec)})
        fetching = FetchSpec(self.timeout_s, self.retries, self.deadline_s, self.user_agent_token,
                             self.disallowed_header_directives)
        return WorkerSpec(self.output, resize, key_digits, self.thread_count, self.decode_threads, fetching,
                          self.shard_retries, self.url_col, self.caption_col, self.save_additional_columns)

    def output_settings(self) -> dict:
        """The settings that shape what a shard holds; a rerun into the same output must repeat them."""
        shaping = [f.name for f in dataclasses.fields(ResizeSpec)] + ["url_col", "caption_col", "extensions", "dedup",
                                                                 "disallowed_header_directives", "input_format",
                                                                 "save_additional_columns"]
        return {name: list(v) if isinstance(v := getattr(self, name), tuple) else v for name in shaping}


def summarize(results: list[dict], num_already_done: int, manifest: dict, seconds: float) -> str:
    status = Counter(r["status"] for r in results)
    failures: Counter = Counter()
    for r in results:
        failures.update(r.get("failures", {}))
    processed = sum(r["num_inputs"] for r in results if r["status"] == "written")
    lines = [
        f"shards: {status['written']} written, {num_already_done + status['skipped']} already complete, "
        f"{status['failed']} failed",
        f"samples in dataset: {manifest['num_samples']} in {manifest['num_shards']} shards"
        + ("" if manifest["complete"] else " (INCOMPLETE: rerun to finish)"),
        f"this run: {processed} inputs in {seconds:.1f} s ({processed / max(seconds, 1e-9):.1f} images/s)",
    ]
    lines += [f"  not written, {reason}: {n}" for reason, n in sorted(failures.items())]
    lines += [f"  shard {r['shard']} FAILED: {r['error']}" for r in results if r["status"] == "failed"]
    return "\n".join(lines)


@dataclass
class ManifestRecord:
    """The committed shards' counts as tasks report them, written to the manifest now and then."""

    output: str
    num_planned: int
    counts: dict[str, int]
    clock: RecordClock = field(default_factory=RecordClock)

    def add(self, result: dict) -> None:
        if result["status"] in ("written", "skipped"):
            self.counts[result["shard"]] = result["num_samples"]
        if self.clock.due():
            self.write()

    def write(self) -> dict:
        return write_manifest(self.output, self.num_planned, self.counts)


def write_shards(plan: Plan, names: list[str], cfg: ShardConfig, spec: WorkerSpec, dedup,
                 record: ManifestRecord) -> list[dict]:
    """Write shards `names` of the plan in parallel: each task gets its shard's row ranges and reads the
    rows itself. Not sized from the cluster at start (a 0-CPU head would give one task): Ray Data runs
    as many as the cluster has room for, and more as it grows."""
    if not names:
        return []
    shards = ray.data.from_items([{"name": n, "segments": [dataclasses.asdict(s) for s in plan.segments(n)]}
                                  for n in names], override_num_blocks=len(names))
    results = []
    with Progress(sum(plan.shard_size(n) for n in names), "inputs") as progress:
        reporter = progress.reporter()
        written = shards.map(lambda row: process_shard(row["name"], [Segment(**s) for s in row["segments"]], spec,
                                                       dedup, reporter),
                             num_cpus=cfg.cpus_per_task, concurrency=cfg.max_tasks or None)
        for stats in written.iter_rows():
            results.append(stats)
            record.add(stats)
            progress.done(stats["num_inputs"])
    return results


def run(cfg: ShardConfig) -> dict:
    """Plan, write every pending shard in parallel, then the manifest; returns the manifest.

    The plan comes first, before Ray starts: a mismatched rerun is a ConfigError with no cluster."""
    source = SourceSpec(cfg.input, cfg.url_col, cfg.caption_col, cfg.extensions, cfg.input_format,
                        cfg.save_additional_columns)
    plan = make_plan(source, cfg.output, cfg.samples_per_shard, cfg.output_settings())
    if cfg.plan_only:
        last = plan.names()[-1]
        lists = f"{len(plan.files)} list file{'s' if len(plan.files) > 1 else ''}"
        print(f"plan: {plan.num_inputs} inputs from {plan.input} in {plan.num_shards} shards of "
              f"{plan.samples_per_shard} (the last, {last}, holds {plan.shard_size(last)}), read from {lists}; "
              f"written under {cfg.output.rstrip('/')}/_plan/; nothing fetched")
        return {"plan_only": True, "num_inputs": plan.num_inputs, "num_shards": plan.num_shards}
    init_ray(cfg.num_cpus or None)
    spec = cfg.worker_spec(plan.key_digits)
    recorded = recorded_counts(cfg.output)
    done = committed_names(cfg.output, plan.names(), known=recorded)  # the manifest's, and one listing for the rest
    done_set = set(done)
    pending = [n for n in plan.names() if n not in done_set]
    log.info("%d shards complete, %d to write", len(done), len(pending))
    dedup = start_dedup(cfg.output, done, cfg.dedup_actors) if cfg.dedup else None
    record = ManifestRecord(cfg.output, plan.num_shards, committed_counts(cfg.output, done, recorded))
    started = time.time()
    results = write_shards(plan, pending, cfg, spec, dedup, record)
    if cfg.retry_failed:
        if any(r["status"] == "failed" for r in results):
            print("retry pass: not started, some shards failed (rerun to finish them first)")
        else:
            before = plan.num_shards
            plan = retry_pass(cfg.output, plan)
            retried = plan.names()[before:]
            print(f"retry pass: {sum(plan.shard_size(n) for n in retried)} inputs with transient failures "
                  f"into {len(retried)} new shards" if retried else "retry pass: no transient failure to retry")
            record.num_planned = plan.num_shards
            results += write_shards(plan, retried, cfg, spec, dedup, record)
    manifest = record.write()
    print(summarize(results, len(done), manifest, time.time() - started))
    if any(r["status"] == "failed" for r in results):
        manifest["failed"] = True
    return manifest


def main(argv: list[str] | None = None) -> int:
    cfg = job_config(ShardConfig, argv, __doc__)
    if cfg is None:
        return 2
    try:
        manifest = run(cfg)
    except ConfigError as e:  # the output was planned with other settings
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if manifest.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
