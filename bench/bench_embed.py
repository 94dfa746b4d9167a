"""The embed job end to end (decode, superpixels, model, write) against a bare forward loop; or, with
--cpu-side, the job's CPU stage alone per core.

    .venv/bin/python bench/bench_embed.py --clip-model ViT-B-16 --num-images 192 --batch-size 32
    .venv/bin/python bench/bench_embed.py --cpu-side --num-images 192 --batch-size 32

--cpu-side times the decode tasks' work (`prepare_chunks`: read the tar, decode, centre-square canvas,
superpixels) in this process on one thread, over the same shards, at the ViT-B/16 canvas (224 px),
with superpixels on the full canvas and at 112 px, and says how many such cores one GPU embedding
GPU_RATE images/s would keep busy.

Same model (random weights: none can be downloaded here; speed does not depend on them), batch and
image count. The bare loop calls the teacher's dense+global forward on tensors already decoded and
normalised, in one process with all cores. The job's rate is its own "this run" figure: images over
the time from submitting the shards to the last part written (actor start and model load included,
Ray's own start-up not).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_RATE = 4000  # images/s of one GPU embedding ViT-B/16 in fp16 (issue 15's figure; not measured here)


def cpu_side(shards: Path, num_repeats: int = 2) -> None:
    import cv2
    import torch

    from formats.manifest import read_manifest, shard_counts
    from model.superpixels import SuperpixelConfig
    from pipelines.embedding.worker import EmbedSpec, prepare_chunks

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    names = list(shard_counts(read_manifest(str(shards))))
    print(f"\n| CPU stage, one core, canvas 224 | images/s per core | cores per GPU at {GPU_RATE:,} images/s |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as empty:  # no part committed: every chunk is prepared
        for resolution in (0, 112):
            spec = EmbedSpec(str(shards), empty, 224, 64, SuperpixelConfig(resolution=resolution), "float16")
            best = 0.0
            for _ in range(num_repeats):
                started, images = time.perf_counter(), 0
                for name in names:
                    images += sum(len(c["keys"]) for c in prepare_chunks({"shard": name}, spec))
                best = max(best, images / (time.perf_counter() - started))
            label = "superpixels on the full canvas" if not resolution else f"superpixels at {resolution} px"
            print(f"| decode + canvas + {label} | {best:.1f} | {GPU_RATE / best:.0f} |")


def bare_loop(model: str, num_images: int, batch_size: int) -> float:
    import torch

    from formats.teacher_weights import load_teacher
    from model.clip_teacher import TeacherConfig, dense_and_global

    teacher = load_teacher(TeacherConfig(model))
    size = teacher.image_size
    images = torch.randn(batch_size, 3, size, size)
    dense_and_global(teacher, images[:2])  # warm-up
    start = time.perf_counter()
    for _ in range(num_images // batch_size):
        dense_and_global(teacher, images)
    return (num_images // batch_size) * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip-model", default="ViT-B-16")
    parser.add_argument("--num-images", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--storage", default="float16")
    parser.add_argument("--work", default=str(REPO / "bench" / "out" / "embed"))
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "embed.json"))
    parser.add_argument("--cpu-side", action="store_true", help="time the CPU stage alone, per core")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work / "clip", ignore_errors=True)
    from formats.manifest import MANIFEST

    if not (work / "shards" / MANIFEST).exists():
        from demo.synth import write_corpus
        from pipelines import shard

        write_corpus(str(work / "corpus"), num_train=args.num_images, num_val=0, size=256)
        shard.run(shard.ShardConfig(input=str(work / "corpus" / "train"), output=str(work / "shards"),
                                    samples_per_shard=args.batch_size * 2, image_size=256))
    if args.cpu_side:
        return cpu_side(work / "shards")
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    job = subprocess.run([sys.executable, "pipelines/embed.py", "--input", str(work / "shards"), "--output",
                          str(work / "clip"), "--clip-model", args.clip_model, "--batch-size", str(args.batch_size),
                          "--chunk-size", str(args.batch_size * 2), "--storage", args.storage, "--num-unknown", "0"],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True)
    job_rate = float(re.search(r"this run: \d+ images in [\d.]+ s \(([\d.]+) images/s\)", job.stdout).group(1))
    storage = re.search(r"sidecar storage: .*", job.stdout).group(0)
    bare = bare_loop(args.clip_model, args.num_images, args.batch_size)
    print(f"\n| {args.clip_model}, batch {args.batch_size}, {args.num_images} images | images/s |\n|---|---|")
    print(f"| bare forward loop (decoded tensors, one process) | {bare:.2f} |")
    print(f"| embed job end to end (decode, superpixels, model, write) | {job_rate:.2f} |")
    print(f"\njob / bare loop: {job_rate / bare:.2f}; {storage}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"args": vars(args), "bare": bare, "job": job_rate, "storage": storage}, fh, indent=1)


if __name__ == "__main__":
    main()
