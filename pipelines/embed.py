"""Precompute what the losses need from CLIP for every image shard: dense features, global embedding,
superpixels, and the target prototypes. A Ray Data job.

    python pipelines/embed.py --input data/shards --output data/clip --clip-model ViT-B-16 \\
        --clip-pretrained openai --classes classes.txt
    ray job submit --working-dir . -- python pipelines/embed.py --input s3://b/shards --output s3://b/clip ...

CPU tasks decode shards into canvases and superpixels; a pool of model actors (--gpus-per-actor
each; min..max actors, growing with the cluster) runs the teacher and writes sidecar parts
(formats/sidecar.py). Then `SHARD_stats.json` per shard, `sidecar_index.json`, `prototypes.pt`
(the names' text prototypes and the centres of the teacher's features, flagged where a name
explains them) and `embed_manifest.json` describing how features were made; a rerun skips finished
parts and refuses an output made with different settings.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

# Run as a file (`python pipelines/embed.py`, as under `ray job submit`): this checkout's packages,
# not an installed copy of them.
if not __package__:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray

from common.config import ConfigError, job_config
from common.progress import Progress
from common.ray_utils import gpus_per_actor, init_ray
from common.storage import filesystem, join
from formats.manifest import read_manifest, shard_counts
from formats.prototypes import has_prototypes, read_class_names, save_prototypes
from formats.shards import RecordClock, committed_names, tar_name
from formats.sidecar import (
    STORAGE_FORMATS,
    check_embed_manifest,
    commit_shard,
    committed_shard_stats,
    num_parts,
    recorded_shard_stats,
    shard_parts,
    write_sidecar_index,
)
from formats.teacher_weights import check_teacher, load_teacher
from model.clip_teacher import LAST_BLOCKS, PRECISIONS, TeacherConfig, auto_precision
from model.prototypes import EXPLAIN_RULES
from model.superpixels import SuperpixelConfig
from pipelines.embedding.prototypes import build_prototypes, sample_dense, stored_dense, teacher_dense
from pipelines.embedding.worker import CHUNKS_AT_ONCE, ClipEmbedder, EmbedSpec, prepare_chunks

log = logging.getLogger("embed")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EmbedConfig:
    input: str = field(metadata={"help": "shards written by pipelines/shard.py (folder or s3:// prefix)"})
    output: str = field(metadata={"help": "folder or s3:// prefix for the sidecars"})
    clip_model: str = field(default="tiny-rn", metadata={"help": "any open_clip architecture name"})
    clip_pretrained: str = field(default="", metadata={"help": "open_clip tag, local file or s3:// checkpoint; "
                                                               "empty = random weights (loud warning)"})
    precision: str = field(default="auto", metadata={"help": "auto (fp16 on GPU, fp32 on CPU) or an open_clip precision"})
    last_block: str = field(default="maskclip", metadata={"help": "/".join(LAST_BLOCKS)})
    image_size: int = field(default=0, metadata={"help": "canvas side; 0 = the model's input size"})
    storage: str = field(default="float16", metadata={
        "help": "/".join(STORAGE_FORMATS) + "; none = superpixels only, for the trainer's teacher.mode=online"})
    classes: str = field(default="", metadata={"help": "file of known class names, one a line"})
    num_unknown: int = field(default=16, metadata={"help": "k-means centres to try as unknown prototypes"})
    explain_rule: str = field(default="margin", metadata={
        "help": "when a known name explains a centre: margin (its best name stands out from the others) or cosine "
                "(a cosine to a name above the threshold; never met across CLIP's modality gap)"})
    # It depends on the teacher: choose it on a dev split (bench/bench_semantic_targets.py). 0.5 for the demo's
    # shipped teacher: on its dev split the background's centres stand at 0.56 and above, the unseen class's at
    # 0.46, so the names take the background and leave the unseen class (targets right on 66.5% of seen pixels,
    # its zero-shot 67.8%); 0.4 names the unseen class too. An earlier teacher of the same recipe wanted 0.4
    # (its centres at 0.49 and 0.34). BENCHMARKS.md, "A shipped teacher".
    explain_threshold: float = field(default=0.5, metadata={
        "help": "margin: the share of the largest centre's margin a centre needs; cosine: the cosine"})
    unknown_sample_images: int = 512
    unknown_max_vectors: int = 200_000
    seed: int = 0
    batch_size: int = 64
    chunk_size: int = 256
    min_model_actors: int = field(default=1, metadata={"help": "model actors kept however idle"})
    max_model_actors: int = field(default=0, metadata={"help": "0 = as many as the cluster grows to"})
    gpus_per_actor: float = field(default=-1, metadata={
        "help": "GPUs each model actor asks for, fractions allowed (0.5: two share one); 0 = CPU actors; -1 = "
                "auto: 1 on a cluster (RAY_ADDRESS set, e.g. under ray job submit) or when GPUs are up, else 0"})
    cpus_per_actor: float = 1
    max_decode_tasks: int = field(default=0, metadata={"help": "decode tasks at once; 0 = as the cluster allows"})
    threads_per_actor: int = field(default=0, metadata={"help": "torch threads in an actor; 0 = all cores on a "
                                                                "CPU node, torch's default on a GPU"})
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    num_cpus: int = field(default=0, metadata={"help": "CPUs for a local Ray; 0 = all"})

    def __post_init__(self):
        if self.storage not in STORAGE_FORMATS:
            raise ConfigError(f"storage must be one of {STORAGE_FORMATS}, got {self.storage!r}")
        if self.last_block not in LAST_BLOCKS:
            raise ConfigError(f"last_block must be one of {tuple(LAST_BLOCKS)}, got {self.last_block!r}")
        for name in ("batch_size", "chunk_size", "unknown_sample_images", "min_model_actors"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.max_model_actors and self.max_model_actors < self.min_model_actors:
            raise ConfigError(f"max_model_actors {self.max_model_actors} is below min_model_actors {self.min_model_actors}")
        if self.cpus_per_actor <= 0 or self.max_decode_tasks < 0 or not (self.gpus_per_actor == -1
                                                                         or self.gpus_per_actor >= 0):
            raise ConfigError("cpus_per_actor must be > 0, max_decode_tasks >= 0, gpus_per_actor >= 0 or -1 (auto)")
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be auto or one of {PRECISIONS}, got {self.precision!r}")
        if self.explain_rule not in EXPLAIN_RULES:
            raise ConfigError(f"explain_rule {self.explain_rule!r} unknown (choose from {', '.join(EXPLAIN_RULES)})")
        if not -1 <= self.explain_threshold <= 1:
            raise ConfigError("explain_threshold is a share of the largest margin or a cosine: -1..1")

    def teacher(self, device: str = "cpu") -> TeacherConfig:
        """The teacher as it runs on `device` (the precision "auto" is decided there)."""
        return TeacherConfig(self.clip_model, self.clip_pretrained, auto_precision(self.precision, device))


def superpixel_settings(cfg: SuperpixelConfig) -> dict:
    """The superpixel settings the manifest records; a resolution of 0 is left out, so outputs made
    before that setting existed still resume."""
    settings = asdict(cfg)
    if not settings["resolution"]:
        del settings["resolution"]
    return settings


def storage_report(output: str, parts: list[str], num_samples: int) -> str:
    fs, root = filesystem(output)
    size = sum(fs.size(join(root, tar_name(p))) for p in parts)
    per_image = size / max(num_samples, 1)
    return f"sidecar storage: {per_image / 1e3:.1f} KB per image, {per_image * 1e6 / 1e9:.1f} GB per million images"


def run(cfg: EmbedConfig) -> dict:
    # the user's inputs first: a mistake is one line, with no cluster started and nothing written
    shards = shard_counts(read_manifest(cfg.input))
    names = read_class_names(cfg.classes) if cfg.classes else []
    check_teacher(cfg.clip_model, cfg.clip_pretrained)
    teacher = load_teacher(cfg.teacher())  # on the driver's CPU: text prototypes and the manifest's facts
    image_size = cfg.image_size or teacher.image_size
    manifest = {
        "format_version": FORMAT_VERSION, "clip_model": cfg.clip_model, "pretrained": teacher.pretrained_source,
        "random_init": teacher.random_init, "last_block": cfg.last_block, "image_size": image_size,
        "grid": image_size // teacher.patch_size, "embed_dim": teacher.embed_dim, "storage": cfg.storage,
        "chunk_size": cfg.chunk_size, "superpixels": superpixel_settings(cfg.superpixels), "input": cfg.input,
    }
    # prototypes are built once: other names, or another rule for which a name explains a centre, need another output
    manifest["classes"] = names
    manifest["explain"] = {"rule": cfg.explain_rule, "threshold": cfg.explain_threshold}
    check_embed_manifest(cfg.output, manifest)
    init_ray(cfg.num_cpus or None)
    recorded = recorded_shard_stats(cfg.output)
    done_before = set(committed_names(cfg.output, list(shards), known=recorded))  # the index's, one listing for the rest
    pending = [name for name in shards if name not in done_before]
    # the stats of shards done before come from the last index; this run's from their commit
    by_shard = committed_shard_stats(cfg.output, [n for n in shards if n in done_before], recorded)
    spec = EmbedSpec(cfg.input, cfg.output, image_size, cfg.chunk_size, cfg.superpixels, cfg.storage)
    log.info("%d shards done, %d to embed", len(shards) - len(pending), len(pending))
    started, results = time.time(), []
    if pending:
        # Nothing is sized from the cluster at start: Ray Data grows the decode tasks and the actor pool
        # (min..max) as an autoscaler adds nodes, and each actor asks for what the flags say.
        gpus = gpus_per_actor(cfg.gpus_per_actor) if cfg.storage != "none" else 0.0  # superpixels-only sidecars run no model
        if gpus and not ray.cluster_resources().get("GPU", 0):
            log.warning("model actors ask for %g GPU each and the cluster has none up: waiting for the autoscaler "
                        "to add GPU nodes (--gpus-per-actor 0 runs them on CPUs)", gpus)
        chunks = ray.data.from_items([{"shard": n} for n in pending], override_num_blocks=len(pending)).flat_map(
            # max_retries bounds the reruns of a decode task whose worker died (Ray Data's default is
            # unbounded; a storage error inside the task is not retried by it, s3fs retries those), and a
            # remote arg the model stage lacks keeps this CPU stage its own operator (Ray Data fuses a task
            # stage into the next when their remote args match) so decoding overlaps the model. Ray Data
            # warns that 2.64 drops such args: pyproject.toml keeps Ray below 2.64 until this is redone.
            prepare_chunks, fn_kwargs={"spec": spec}, num_cpus=1, max_retries=3,
            concurrency=cfg.max_decode_tasks or None)
        # each actor takes CHUNKS_AT_ONCE chunks at once, its own lock letting one into the model: the
        # device works on one while the other's part is encoded and uploaded
        pool = ray.data.ActorPoolStrategy(min_size=cfg.min_model_actors, max_size=cfg.max_model_actors or None,
                                          max_concurrent_calls_per_actor=CHUNKS_AT_ONCE,
                                          enable_true_multi_threading=True)
        clock = RecordClock()
        with Progress(sum(shards[n] for n in pending), "images") as progress:
            parts = chunks.map(ClipEmbedder, compute=pool, num_gpus=gpus, num_cpus=cfg.cpus_per_actor,
                               fn_constructor_kwargs={
                                   "clip_model": cfg.clip_model, "clip_pretrained": cfg.clip_pretrained,
                                   "precision": cfg.precision, "spec": spec, "batch_size": cfg.batch_size,
                                   "last_block": cfg.last_block, "num_threads": cfg.threads_per_actor,
                                   "progress": progress.reporter()})
            for part in parts.iter_rows():
                results.append(part)
                progress.done(part["num_samples"] + part["num_failed"])
                if part["shard_stats"]:  # this part was its image shard's last: the shard is committed
                    by_shard[part["shard"]] = json.loads(part["shard_stats"])
                    if clock.due():
                        write_sidecar_index(cfg.output, by_shard)
    for name in pending:  # parts all written by an earlier run that stopped before committing the shard
        if name not in by_shard and (stats := commit_shard(cfg.output, name, num_parts(shards[name], cfg.chunk_size))):
            by_shard[name] = stats
    write_sidecar_index(cfg.output, by_shard)
    all_stats = [by_shard[n] for n in shards if n in by_shard]
    all_parts = [p for s in all_stats for p in shard_parts(s)]
    complete = len(all_stats) == len(shards)
    if complete and not has_prototypes(cfg.output):
        # with no stored features (storage none) the driver's teacher embeds the sample itself
        grids = teacher_dense(cfg.input, list(shards), teacher, image_size, cfg.last_block, cfg.seed) \
            if cfg.storage == "none" else stored_dense(cfg.output, all_parts, cfg.seed)
        features = sample_dense(grids, cfg.unknown_sample_images, cfg.unknown_max_vectors, cfg.seed)
        protos = build_prototypes(teacher, names, features, cfg.num_unknown, cfg.explain_rule, cfg.explain_threshold,
                                  cfg.seed)
        save_prototypes(cfg.output, protos)
        log.info("prototypes: %d known names, %d centres of which %d explained by a name", len(protos["known"]),
                 len(protos["centres"]), int(protos["explained"].sum()))
    seconds = time.time() - started
    embedded = sum(r["num_samples"] for r in results)
    failures = sum((Counter(s["failures"]) for s in all_stats), Counter())
    num_samples = sum(s["num_samples"] for s in all_stats)
    print(f"shards: {sum(1 for n in pending if n in by_shard)} embedded now, {len(shards) - len(pending)} before, "
          f"{len(shards) - len(all_stats)} unfinished" + ("" if complete else " (rerun to finish)"))
    print(f"this run: {embedded} images in {seconds:.1f} s ({embedded / max(seconds, 1e-9):.1f} images/s)"
          + "".join(f"; {n} parts by {where}" for where, n in sorted(Counter(r["actor"] for r in results).items())))
    print(f"samples with features: {num_samples}" + "".join(f"; skipped {r}: {n}" for r, n in sorted(failures.items())))
    print(storage_report(cfg.output, all_parts, num_samples))
    if teacher.random_init:
        print("WARNING: the teacher has RANDOM weights; these features teach nothing (pass --clip-pretrained)")
    return {"complete": complete, "num_samples": num_samples, "failures": dict(failures), "images_per_s":
            embedded / max(seconds, 1e-9)}


def main(argv: list[str] | None = None) -> int:
    cfg = job_config(EmbedConfig, argv, __doc__)
    if cfg is None:
        return 2
    try:
        result = run(cfg)
    except ConfigError as e:  # the output holds features made another way
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
