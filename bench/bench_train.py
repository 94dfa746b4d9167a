"""What the trainer costs over a bare PyTorch loop, and what streaming from shards and from S3 costs.

    .venv/bin/python bench/bench_train.py --steps 60 --out bench/out/train.json

Same model, same per-step global batch, same CPU, in one run: (1) a bare loop over batches held in
memory (one process, all cores); (2) the trainer (Ray Train + DeepSpeed, 2 workers x 1 CPU, gloo)
over in-memory batches; (3) the trainer streaming local shards; (4) the trainer streaming the same
shards from a loopback S3 endpoint (moto); (5) the trainer on local shards with the teacher run in
the step (teacher.mode=online) and superpixel-only sidecars. Rates are images/s (2 views per image) over the steps
after the first log window; data wait is the fraction of step time spent waiting for a batch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prepare(root: Path, num_images: int) -> None:
    from demo.synth import CLASSES, write_corpus
    from formats.prototypes import has_prototypes
    from pipelines import embed, shard

    if has_prototypes(str(root / "clip-bare")):
        return
    write_corpus(str(root / "corpus"), num_train=num_images, num_val=0, size=128)
    shard.run(shard.ShardConfig(input=str(root / "corpus" / "train"), output=str(root / "shards"),
                                samples_per_shard=num_images // 8, image_size=128))
    (root / "classes.txt").write_text("\n".join(CLASSES[1:]) + "\n")
    for output, storage in (("clip", "float16"), ("clip-bare", "none")):  # the second for the online teacher
        embed.run(embed.EmbedConfig(input=str(root / "shards"), output=str(root / output), clip_model="tiny-rn",
                                    classes=str(root / "classes.txt"), num_unknown=4, storage=storage))


def train_config(root: Path, name: str, args, **over):
    from common.config import parse_config
    from trainer.config import TrainConfig

    overrides = [f"data.shards={root / 'shards'}", f"data.clip={root / 'clip'}", f"max_steps={args.steps}",
                 f"data.batch_size_per_worker={args.batch}", f"data.num_loader_workers={args.loader_workers}",
                 "scaling.num_workers=2", f"run.name={name}", f"run.storage_path={root / 'runs'}",
                 f"run.log_dir={root / 'logs'}", f"run.log_every_steps={args.window}",
                 f"run.checkpoint_every_steps={10 * args.steps}"]
    overrides += [f"{k}={v}" for k, v in over.items()]
    return parse_config(TrainConfig, ["--config", str(REPO / "trainer/configs/tiny.yaml"), *overrides])


def trainer_rate(root: Path, name: str) -> dict:
    rows = [json.loads(line) for line in open(root / "logs" / name / "metrics.jsonl")][1:]  # skip start-up window
    return {"images_per_s": sum(r["images_per_s"] for r in rows) / len(rows),
            "data_wait": sum(r["data_wait_fraction"] for r in rows) / len(rows)}


def bare_rate(root: Path, args) -> dict:
    """One process, all cores, the global batch (2 workers' worth), batches built once and reused."""
    import torch

    from formats.prototypes import load_prototypes, semantic_targets
    from formats.sidecar import read_embed_manifest
    from model.network import build_network
    from trainer.data import StreamSpec, list_shards, make_loader, steps_per_epoch
    from trainer.step import build_optimizer, forward_losses

    cfg = train_config(root, "bare", args)
    cfg = replace(cfg, network=replace(cfg.network, clip_dim=read_embed_manifest(cfg.data.clip)["embed_dim"]))
    shards = list_shards(cfg.data.shards, cfg.data.clip)
    spec = StreamSpec(cfg.data.shards, cfg.data.clip, shards, 128, 2 * args.batch, cfg.data.shuffle_buffer,
                      cfg.views, cfg.feature_size, 0, 10)
    batches = list(itertools.islice(make_loader(spec, 0, 1, steps_per_epoch(shards, 1, 2 * args.batch), 0, 0), 8))
    protos = load_prototypes(cfg.data.clip)
    targets = semantic_targets(protos)
    torch.manual_seed(0)
    net = build_network(cfg.network)
    optimizer = build_optimizer(net, cfg)
    times = []
    for step in range(args.steps):
        start = time.perf_counter()
        losses = forward_losses(net, batches[step % len(batches)], targets, cfg)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    steady = times[args.window:]
    return {"images_per_s": 2 * 2 * args.batch * len(steady) / sum(steady), "data_wait": 0.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--window", type=int, default=10, help="steps per log window")
    parser.add_argument("--batch", type=int, default=8, help="images per worker per step")
    parser.add_argument("--loader-workers", type=int, default=1)
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--work", default=str(REPO / "bench" / "out" / "train"))
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "train.json"))
    args = parser.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    root = Path(args.work)
    shutil.rmtree(root / "runs", ignore_errors=True)
    shutil.rmtree(root / "logs", ignore_errors=True)

    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    import ray
    import s3fs

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    prepare(root, args.num_images)
    fs = s3fs.S3FileSystem()
    fs.mkdir("bench")
    for folder in ("shards", "clip"):
        fs.put(str(root / folder) + "/", f"bench/{folder}/", recursive=True)

    from trainer import train

    results = {"bare loop, in memory": bare_rate(root, args)}
    train.run(train_config(root, "memory", args, **{"data.in_memory_batches": 8}))
    results["trainer, in-memory batches"] = trainer_rate(root, "memory")
    train.run(train_config(root, "local", args))
    results["trainer, local shards"] = trainer_rate(root, "local")
    train.run(train_config(root, "s3", args, **{"data.shards": "s3://bench/shards", "data.clip": "s3://bench/clip"}))
    results["trainer, S3 (loopback)"] = trainer_rate(root, "s3")
    train.run(train_config(root, "online", args, **{"data.clip": str(root / "clip-bare"), "teacher.mode": "online"}))
    results["trainer, local shards, online teacher (superpixel-only sidecars)"] = trainer_rate(root, "online")
    ray.shutdown()
    server.stop()

    base = results["bare loop, in memory"]["images_per_s"]
    print("\n| setting | images/s | vs bare loop | data wait |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['images_per_s']:.1f} | {r['images_per_s'] / base:.2f} | {100 * r['data_wait']:.1f}% |")
    s3, local = results["trainer, S3 (loopback)"], results["trainer, local shards"]
    print(f"\nS3 / local shards: {s3['images_per_s'] / local['images_per_s']:.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"args": vars(args), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
