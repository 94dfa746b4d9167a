"""Superpixels at full and at reduced resolution: their cost per image on one core, and what the
contrastive term learns from them on the demo corpus (the contrastive-only ablation, the same seeds).

    python -m bench.bench_superpixels --seeds 0 1 --runs-root bench/out/superpixels
    python -m bench.bench_superpixels --seeds 0 1 --runs-root bench/out/superpixels --tabulate-only

Each run is `pipelines/main.py --quick --name spRES-sSEED --train-overrides loss.embedding_weight=0,
loss.semantic_weight=0,run.seed=SEED superpixels.resolution=RES` (RES 0: the full canvas, the demo
teacher's 128 px; 64: half its side). The timing segments twenty demo scenes at the canvas the embed
job uses for the ViT-B/16 teacher (224 px) at the same fraction of its side (64 / 128 -> 112 / 224),
torch and OpenCV held to one thread. Runs already reported are not redone.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import torch

from bench.bench_teacher_modes import COLUMNS, cell, run, seeded_runs, student_row
from demo.synth import render_scene
from model.superpixels import SuperpixelConfig, superpixels

DEMO_CANVAS, CANVAS = 128, 224  # the demo teacher's input; ViT-B/16's
CONTRASTIVE_ONLY = "loss.embedding_weight=0,loss.semantic_weight=0"


def ms_per_image(cfg: SuperpixelConfig, images: list[np.ndarray]) -> float:
    superpixels(images[0], cfg)  # warm-up
    started = time.perf_counter()
    for image in images:
        superpixels(image, cfg)
    return 1000 * (time.perf_counter() - started) / len(images)


def main(argv: list[str] | None = None) -> int:
    args, root = seeded_runs(__doc__, [0, 1], "superpixels", argv, lambda parser: parser.add_argument(
        "--resolutions", type=int, nargs="+", default=[0, 64]))
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    images = [render_scene(seed, CANVAS).image for seed in range(20)]
    if not args.tabulate_only:
        for seed in args.seeds:
            for res in args.resolutions:
                run(root, f"sp{res}-s{seed}", ["--train-overrides", f"{CONTRASTIVE_ONLY},run.seed={seed}",
                                               f"superpixels.resolution={res}"])
    print(f"| superpixels | ms per {CANVAS} px image, 1 core | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for res in args.resolutions:
        rows = [student_row(root / f"sp{res}-s{seed}" / "report.md") for seed in args.seeds]
        at_224 = res * CANVAS // DEMO_CANVAS
        ms = ms_per_image(SuperpixelConfig(resolution=at_224), images)
        print(f"| {'full canvas' if not res else f'{res} px of {DEMO_CANVAS} ({at_224} of {CANVAS})'} | {ms:.1f} | "
              + " | ".join(cell([r[i] for r in rows]) for i in COLUMNS.values()) + " |")
    print(f"\nstudent trained with the contrastive term only, {len(args.seeds)} seeds "
          f"({', '.join(map(str, args.seeds))}): mean ± sd")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
