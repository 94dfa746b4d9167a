"""Shard job against img2dataset on the same photos, served over loopback HTTP, on the same cores.

    .venv/bin/python bench/bench_shard.py --i2d-bin /path/to/img2dataset-venv/bin/img2dataset \
        --num-images 10000 --repeat 5 --out bench/out/shard.json

Both tools read a parquet of URLs from a threaded HTTP server (run in its own process), write
WebDataset tars of keep-ratio 256 px JPEGs at quality 95, and are timed as whole processes.
"Steady" images/s is inputs over the span from the first shard's start to the last shard's end,
read from each tool's own per-shard stats. The floor is an in-process decode-resize-encode loop
over the same bytes, times the cores. With `--repeat N` the tools alternate which runs first and
the medians are reported beside every run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from formats.shards import STATS_SUFFIX

REPO = Path(__file__).resolve().parents[1]
SIZE, QUALITY = 256, 95


def _photo(seed: int) -> bytes:
    """A 640x480 JPEG with photo-like statistics: smooth shapes, gradients, fine grain."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = cv2.resize(coarse, (640, 480), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    for _ in range(6):
        cx, cy, r = rng.integers(0, 640), rng.integers(0, 480), int(rng.integers(20, 140))
        cv2.circle(img, (int(cx), int(cy)), r, rng.uniform(0, 255, 3).tolist(), -1)
    img = cv2.GaussianBlur(img, (0, 0), 2.0) + rng.normal(0, 4, img.shape)
    ok, buf = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return buf.tobytes()


def _write_photo(args: tuple[str, int]) -> None:
    folder, i = args
    path = Path(folder) / f"{i:06d}.jpg"
    if not path.exists():
        path.write_bytes(_photo(i))


def make_photos(folder: Path, n: int, cores: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_write_photo, [(str(folder), i) for i in range(n)], chunksize=64))
    return [folder / f"{i:06d}.jpg" for i in range(n)]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    code = ("import sys,time; from bench.loopback_http import serve_folder\n"
            "with serve_folder(sys.argv[1]) as url:\n print(url, flush=True)\n time.sleep(10**6)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def steady_rate(stats_files: list[str], count_key: str) -> tuple[float, int]:
    stats = [json.loads(Path(p).read_text()) for p in stats_files]
    count = sum(s[count_key] for s in stats)
    span = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    return count / span, count


def run_timed(cmd: list[str], env: dict | None = None) -> float:
    started = time.time()
    result = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    seconds = time.time() - started
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return seconds


def bench_ours(urls: Path, out: Path, per_shard: int, cores: int) -> dict:
    cmd = [sys.executable, "pipelines/shard.py", "--input", str(urls), "--output", str(out),
           "--image-size", str(SIZE), "--resize-mode", "keep_ratio", "--encode-quality", str(QUALITY),
           "--samples-per-shard", str(per_shard), "--num-cpus", str(cores)]
    wall = run_timed(cmd, {"RAY_ADDRESS": ""})
    rate, count = steady_rate(glob.glob(f"{out}/*{STATS_SUFFIX}"), "num_samples")
    return {"wall_s": wall, "steady_images_per_s": rate, "written": count}


def bench_img2dataset(binary: str, urls: Path, out: Path, per_shard: int, cores: int) -> dict:
    cmd = [binary, "--url_list", str(urls), "--input_format", "parquet",
           "--url_col", "url", "--output_format", "webdataset", "--output_folder", str(out),
           "--image_size", str(SIZE), "--resize_mode", "keep_ratio", "--encode_quality", str(QUALITY),
           "--processes_count", str(cores), "--thread_count", "16", "--number_sample_per_shard",
           str(per_shard), "--distributor", "multiprocessing", "--enable_wandb", "False"]
    # albumentations (an img2dataset dependency) checks for updates online unless told not to
    wall = run_timed(cmd, {"NO_ALBUMENTATIONS_UPDATE": "1"})
    rate, count = steady_rate(glob.glob(f"{out}/*{STATS_SUFFIX}"), "successes")
    return {"wall_s": wall, "steady_images_per_s": rate, "written": count}


def floor(files: list[Path], cores: int) -> dict:
    """Decode, resize (shorter side 256) and encode in one process, with OpenCV and with Pillow."""
    blobs = [p.read_bytes() for p in files]
    cv2.setNumThreads(1)

    def with_cv2(data: bytes) -> bytes:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        s = SIZE / min(h, w)
        img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes()

    def with_pillow(data: bytes) -> bytes:
        import io
        img = Image.open(io.BytesIO(data)).convert("RGB")
        s = SIZE / min(img.size)
        img = img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=QUALITY)
        return buf.getvalue()

    result = {}
    for name, fn in (("opencv", with_cv2), ("pillow", with_pillow)):
        started = time.perf_counter()
        for data in blobs:
            fn(data)
        per_core = len(blobs) / (time.perf_counter() - started)
        result[name] = {"per_core": per_core, "times_cores": per_core * cores}
    return result


def run_both(args, urls: Path, work: Path, rep: int) -> dict:
    """One run of each tool; the order alternates between repetitions so drift hits both alike."""
    tools = {"shard_job": lambda out: bench_ours(urls, out, args.samples_per_shard, args.cores)}
    if args.i2d_bin:
        tools["img2dataset"] = lambda out: bench_img2dataset(args.i2d_bin, urls, out, args.samples_per_shard, args.cores)
    order = sorted(tools, reverse=rep % 2 == 0)
    results = {}
    for name in order:
        out = work / f"{name}_{rep}"
        results[name] = tools[name](out)
        subprocess.run(["rm", "-rf", str(out)], check=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=10_000)
    parser.add_argument("--samples-per-shard", type=int, default=1_000)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=1, help="runs of each tool; medians are reported")
    parser.add_argument("--cache-dir", default=str(REPO / "bench" / "out" / "photos"))
    parser.add_argument("--i2d-bin", help="the img2dataset command of a venv that has it; omit to skip it")
    parser.add_argument("--floor-images", type=int, default=600)
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "shard.json"))
    args = parser.parse_args()

    work = Path(args.out).parent / "shard_runs"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    files = make_photos(Path(args.cache_dir), args.num_images, args.cores)
    server, base = start_server(Path(args.cache_dir))
    try:
        urls = work / "urls.parquet"
        pq.write_table(pa.table({"url": [f"{base}/{p.name}" for p in files]}), urls)
        runs = [run_both(args, urls, work, rep) for rep in range(args.repeat)]
    finally:
        server.kill()
    results = {"num_images": args.num_images, "cores": args.cores, "runs": runs,
               "mean_jpeg_kb": float(np.mean([p.stat().st_size for p in files[:500]]) / 1024),
               "floor": floor(files[: args.floor_images], args.cores)}
    median = {name: {key: float(np.median([r[name][key] for r in runs])) for key in ("wall_s", "steady_images_per_s")}
              for name in runs[0]}
    results["median"] = median
    Path(args.out).write_text(json.dumps(results, indent=1))
    print("| tool | whole process (s) | steady images/s | fewest written |\n|---|---|---|---|")
    for name in median:
        walls = " / ".join(f"{r[name]['wall_s']:.1f}" for r in runs)
        rates = " / ".join(f"{r[name]['steady_images_per_s']:.0f}" for r in runs)
        written = min(r[name]["written"] for r in runs)
        print(f"| {name} | {walls} (median {median[name]['wall_s']:.1f}) | "
              f"{rates} (median {median[name]['steady_images_per_s']:.0f}) | {written} |")
    if "img2dataset" in median:
        ours, theirs = median["shard_job"], median["img2dataset"]
        print(f"| ratio of medians | {theirs['wall_s'] / ours['wall_s']:.2f}x faster | "
              f"{ours['steady_images_per_s'] / theirs['steady_images_per_s']:.2f}x | - |")
    for name, f in results["floor"].items():
        print(f"| floor, {name} x {args.cores} cores | - | {f['times_cores']:.0f} ({f['per_core']:.0f}/core) | - |")


if __name__ == "__main__":
    main()
