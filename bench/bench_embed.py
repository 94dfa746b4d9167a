"""The embed job end to end (decode, superpixels, model, write) against a bare forward loop.

    .venv/bin/python bench/bench_embed.py --clip-model ViT-B-16 --num-images 192 --batch-size 32

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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
