"""The GPU check: one short run that measures what a GPU does with this code, using only what the GPU
machine has (torch, timm, pyyaml) plus pure-Python packages carried beside it.

    python3 bench/gpu_check.py                # the full sizes on a GPU: under 5 minutes
    python3 bench/gpu_check.py --tiny         # tiny sizes, anywhere (tests/test_gpu_check.py runs this)
    make gpu-check                            # here: fills bench/out/vendor, then runs the full sizes

The teacher part needs open_clip and its pure-Python dependencies (ftfy, wcwidth): where the
machine lacks them they are imported from bench/out/vendor, which `--vendor bench/out/vendor`
(`make gpu-check-vendor`) copies from this environment; carry that folder to the GPU machine.

Measures, printed as a table and written as JSON (--out):
1. the student's training step (forward, the three losses, backward, SGD) under bf16 autocast,
   as trainer.step runs it, at two batch sizes: images/s, model FLOP utilisation (FLOPs counted by
   torch's FlopCounterMode over one step, against --peak-tflops), peak memory;
2. the teacher's dense forward (MaskCLIP value path, ViT-B/16, random weights: speed only) in
   fp16 and bf16: images/s, MFU, peak memory (the online teacher's cost, teacher.mode=online);
3. the view augmentation (model.views.collate_views) on the device: images/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO / "bench" / "out" / "vendor"
# the project is not installed on the GPU machine: its packages come from this checkout
sys.path.insert(0, str(REPO))
VENDORED = ("open_clip", "ftfy", "wcwidth")

import torch  # noqa: E402

# H200 SXM's dense bf16 peak (NVIDIA's data sheet); a matmul of 8192^3 measured 790 TFLOP/s there.
H200_BF16_TFLOPS = 989.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    backbone: str
    output_stride: int
    crop: int
    embedding_dim: int
    clip_dim: int
    student_batches: tuple[int, int]  # images per step (each gives two views)
    teacher: str
    teacher_batch: int
    views_batch: int
    iterations: int
    warmup: int


FULL = Sizes("resnet50", 16, 224, 128, 512, (32, 64), "ViT-B-16", 256, 64, 20, 3)
TINY = Sizes("small", 4, 32, 16, 64, (2, 4), "tiny-vit", 4, 4, 2, 1)


def copy_vendor(folder: Path) -> None:
    """Copy the pure-Python packages the teacher part needs from this environment into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in VENDORED:
        source = Path(importlib.util.find_spec(name).origin).parent
        shutil.rmtree(folder / name, ignore_errors=True)
        shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    print(f"copied {', '.join(VENDORED)} into {folder}")


def timed(fn, device: torch.device, iterations: int, warmup: int) -> float:
    """Seconds per call of fn, after `warmup` calls, synchronising the device around the timed ones."""
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(iterations):
        fn()
    sync()
    return (time.perf_counter() - started) / iterations


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def synthetic_batch(num_images: int, sizes: Sizes, device: torch.device, generator: torch.Generator) -> dict:
    """What trainer.data yields for `num_images` images (two views each), made on the device."""
    views, side, grid = 2 * num_images, sizes.crop, sizes.crop // sizes.output_stride
    blocks = torch.arange(side, device=device) // max(1, side // 8)  # an 8 x 8 grid of superpixels
    return {
        "images": torch.rand(views, 3, side, side, device=device, generator=generator),
        "regions": (blocks[:, None] * 8 + blocks[None, :]).expand(views, side, side).contiguous(),
        "clip": torch.randn(views, sizes.clip_dim, grid, grid, device=device, generator=generator),
        "source": torch.arange(num_images, device=device).repeat(2),
    }


def student_config(sizes: Sizes):
    """The trainer's config of the measured student: the GPU recipe's network, bf16 autocast."""
    from common.config import build_config
    from trainer.config import TrainConfig

    return build_config(TrainConfig, {
        "data": {"shards": "-", "clip": "-"}, "scaling": {"bf16": True},
        "network": {"backbone": sizes.backbone, "output_stride": sizes.output_stride,
                    "embedding_dim": sizes.embedding_dim, "clip_dim": sizes.clip_dim},
        "views": {"crop_size": sizes.crop}})


def synthetic_targets(clip_dim: int, device: torch.device, generator: torch.Generator):
    """20 names and 16 centres of the teacher's features, half of them explained by a name."""
    from model.prototypes import SemanticTargets

    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, clip_dim, device=device, generator=generator), dim=1)
    return SemanticTargets(unit(20), unit(16), torch.arange(16, device=device) % 2 == 0)


def student_step(sizes: Sizes, device: torch.device, peak_tflops: float) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    from model.network import build_network
    from trainer.step import build_optimizer, forward_losses

    cfg = student_config(sizes)
    torch.manual_seed(0)
    net = build_network(cfg.network).to(device).train()
    optimizer = build_optimizer(net, cfg)
    generator = torch.Generator(device).manual_seed(0)
    targets = synthetic_targets(sizes.clip_dim, device, generator)
    rows = []
    for num_images in sizes.student_batches:
        batch = synthetic_batch(num_images, sizes, device, generator)

        def step():
            optimizer.zero_grad(set_to_none=True)
            forward_losses(net, batch, targets, cfg)["total"].backward()
            optimizer.step()

        with FlopCounterMode(display=False) as counter:
            step()
        reset_peak(device)
        seconds = timed(step, device, sizes.iterations, sizes.warmup)
        flops = counter.get_total_flops()
        rows.append({"part": "student step, bf16 autocast", "batch_images": num_images,
                     "images_per_s": num_images / seconds, "ms_per_step": 1e3 * seconds,
                     "model_tflop_per_step": flops / 1e12,
                     "mfu": flops / seconds / (peak_tflops * 1e12), "peak_memory_gb": peak_memory_gb(device)})
    return rows


def teacher_forward(sizes: Sizes, device: torch.device, peak_tflops: float) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.append(str(VENDOR))  # last: the machine's own packages win where it has them
    try:
        from model.clip_teacher import TeacherConfig, dense_and_global, load_teacher
    except ImportError as e:
        return [{"part": "teacher dense forward", "skipped": f"open_clip is not importable ({e}); "
                 "run with --vendor bench/out/vendor here and carry that folder"}]
    rows = []
    for precision in ("fp16", "bf16"):
        teacher = load_teacher(TeacherConfig(sizes.teacher, "", precision), device)
        side = teacher.image_size
        images = torch.rand(sizes.teacher_batch, 3, side, side, device=device)
        with FlopCounterMode(display=False) as counter:
            dense_and_global(teacher, images[:1])
        flops = counter.get_total_flops() * sizes.teacher_batch
        reset_peak(device)
        seconds = timed(lambda: dense_and_global(teacher, images), device, sizes.iterations, sizes.warmup)
        rows.append({"part": f"teacher dense forward {sizes.teacher} ({'random weights, ' if teacher.random_init else ''}"
                             f"{precision})", "batch_images": sizes.teacher_batch,
                     "images_per_s": sizes.teacher_batch / seconds, "ms_per_step": 1e3 * seconds,
                     "model_tflop_per_step": flops / 1e12, "mfu": flops / seconds / (peak_tflops * 1e12),
                     "peak_memory_gb": peak_memory_gb(device)})

    return rows


def view_augmentation(sizes: Sizes, device: torch.device) -> list[dict]:
    from model.views import ViewConfig, collate_views

    cfg = ViewConfig(crop_size=sizes.crop)
    canvas, grid = 2 * sizes.crop, 2 * sizes.crop // 16
    generator = torch.Generator(device).manual_seed(0)
    samples = [(torch.randint(0, 256, (3, canvas, canvas), dtype=torch.uint8, device=device, generator=generator),
                torch.randint(0, 64, (canvas, canvas), device=device, generator=generator),
                torch.randn(sizes.clip_dim, grid, grid, device=device, generator=generator))
               for _ in range(sizes.views_batch)]
    rng = random.Random(0)
    reset_peak(device)
    seconds = timed(lambda: collate_views(samples, cfg, sizes.crop // sizes.output_stride, rng), device,
                    sizes.iterations, sizes.warmup)
    return [{"part": "view augmentation on the device", "batch_images": sizes.views_batch,
             "images_per_s": sizes.views_batch / seconds, "ms_per_step": 1e3 * seconds,
             "peak_memory_gb": peak_memory_gb(device)}]


def table(rows: list[dict]) -> str:
    def cell(row: dict, key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, fmt)

    lines = ["| part | batch (images) | images/s | ms/step | MFU | peak memory (GB) |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['part']} | skipped: {r['skipped']} | | | | |")
            continue
        lines.append(f"| {r['part']} | {r['batch_images']} | {cell(r, 'images_per_s', '.1f')} | "
                     f"{cell(r, 'ms_per_step', '.1f')} | {cell(r, 'mfu', '.1%')} | {cell(r, 'peak_memory_gb', '.2f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU test); default: the full sizes")
    parser.add_argument("--device", default="auto", help="auto (cuda when there is one), cuda or cpu")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_TFLOPS,
                        help="the device's dense bf16 peak, for MFU (default: H200's data sheet)")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "gpu_check.json"))
    parser.add_argument("--vendor", default="", help="copy open_clip, ftfy, wcwidth into this folder and stop")
    args = parser.parse_args(argv)
    if args.vendor:
        copy_vendor(Path(args.vendor))
        return 0
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    sizes = TINY if args.tiny else FULL
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    started = time.time()
    rows = student_step(sizes, device, args.peak_tflops) + teacher_forward(sizes, device, args.peak_tflops) + \
        view_augmentation(sizes, device)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "sizes": dataclasses.asdict(sizes), "peak_tflops": args.peak_tflops,
              "seconds": time.time() - started, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{report['device']}, torch {report['torch']}, {'tiny' if args.tiny else 'full'} sizes, "
          f"{report['seconds']:.0f} s")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
