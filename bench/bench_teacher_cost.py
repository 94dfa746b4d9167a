"""What the online teacher costs against precomputed features, per image and epoch, counted not timed:

    python -m bench.bench_teacher_cost          # the GPU recipe (bench/gpu_check.py FULL sizes), on CPU

1. FLOPs of the student's training step on one image (its two views: forward, the three losses,
   backward) and of the teacher's dense forward on the same two views (what teacher.mode=online
   adds to every step), counted by torch's FlopCounterMode, so they hold on any device;
2. sidecar bytes per image in each storage form (formats.sidecar.encode_sample on the teacher's
   grid; the superpixels of a demo scene at the teacher's input size).

With a GPU's measured rates (bench/gpu_check.py) these give the trade-off README's "Precomputed or
online teacher" states: online costs 2 x epochs teacher forwards per image; precomputed costs one,
plus storing and reading the sidecar every epoch.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.gpu_check import FULL, student_config, synthetic_batch, synthetic_targets
from demo.synth import render_scene
from formats.sidecar import STORAGE_FORMATS, encode_sample
from model.clip_teacher import TeacherConfig, dense_and_global, load_teacher
from model.network import build_network
from model.superpixels import SuperpixelConfig, superpixels
from trainer.step import forward_losses


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=FULL.teacher, help="open_clip architecture (random weights: counts only)")
    args = parser.parse_args(argv)
    sizes = FULL
    cfg = student_config(sizes)
    torch.manual_seed(0)
    net = build_network(cfg.network).train()
    batch = synthetic_batch(1, sizes, torch.device("cpu"), torch.Generator().manual_seed(0))
    targets = synthetic_targets(sizes.clip_dim, torch.device("cpu"), torch.Generator().manual_seed(0))
    student = count(lambda: forward_losses(net, batch, targets, cfg)["total"].backward())
    teacher = load_teacher(TeacherConfig(args.teacher))
    views = torch.rand(2, 3, sizes.crop, sizes.crop)
    online = count(lambda: dense_and_global(teacher, views))
    side = teacher.image_size
    dense, pooled = dense_and_global(teacher, torch.rand(1, 3, side, side))
    rgb = render_scene(0, side).image
    regions = superpixels(rgb, SuperpixelConfig())
    sidecar = {form: sum(len(v) for k, v in encode_sample("k", dense[0].numpy(), pooled[0].numpy(), regions, form).items()
                         if k != "__key__") for form in STORAGE_FORMATS}
    report = {"student": f"{sizes.backbone} output stride {sizes.output_stride}, crop {sizes.crop}",
              "teacher": f"{args.teacher} at {sizes.crop}", "student_step_gflop_per_image": student / 1e9,
              "online_teacher_gflop_per_image": online / 1e9, "online_over_student": online / student,
              "sidecar_kb_per_image": {k: v / 1e3 for k, v in sidecar.items()}}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
