"""The training loader's throughput on one core: batches of view pairs from local shards, in this process.

    .venv/bin/python -m bench.bench_loader --batches 40 --out bench/out/loader.json

One process, one torch thread, no loader workers: what `trainer.data.make_loader` does per image
(read the tar members, decode the JPEG to its canvas, decode the sidecar, cut two views) is the
cost one loader worker pays per core. Reported: images/s per core (each image gives two views)
over the batches after the first two.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=384)
    parser.add_argument("--batch", type=int, default=16, help="images per batch")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--views-on-device", action="store_true",
                        help="ship raw samples (data.views_on_device): the views are then cut by the step")
    parser.add_argument("--work", default=str(REPO / "bench" / "out" / "train"))
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "loader.json"))
    args = parser.parse_args()

    import torch

    from bench.bench_train import prepare
    from model.views import ViewConfig
    from trainer.data import StreamSpec, list_shards, make_loader, steps_per_epoch

    torch.set_num_threads(1)
    root = Path(args.work)
    prepare(root, args.num_images)
    shards = list_shards(str(root / "shards"), str(root / "clip"))
    spec = StreamSpec(str(root / "shards"), str(root / "clip"), shards, 128, args.batch, 64,
                      ViewConfig(crop_size=args.crop), args.crop // 4, 0, 10, args.views_on_device)
    loader = iter(make_loader(spec, 0, 1, steps_per_epoch(shards, 1, args.batch), 0, 0))
    for _ in range(2):
        next(loader)
    started = time.perf_counter()
    for _ in range(args.batches):
        next(loader)
    seconds = time.perf_counter() - started
    result = {"images_per_s_per_core": args.batches * args.batch / seconds, "batches": args.batches,
              "batch_images": args.batch, "crop": args.crop, "views_on_device": args.views_on_device,
              "seconds": seconds}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"loader: {result['images_per_s_per_core']:.1f} images/s on one core ({args.batches} batches of "
          f"{args.batch}, crop {args.crop}, views cut {'by the step' if args.views_on_device else 'in the loader'})")


if __name__ == "__main__":
    main()
