"""How fast the shard job plans a big URL list, and with how much driver memory:

    python -m bench.bench_plan                  # 1M and 10M rows over 10 parquet files, and as txt lists

Writes the lists once under bench/out/plan/, then plans each in a fresh process (what
`pipelines/shard.py --plan-only` does before anything is fetched) and reports the wall time, rows per
second and that process's peak resident memory (VmHWM: Python, pyarrow and the plan together).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
FILES = 10

PLAN_ONE = """
import json, shutil, sys, time
from pipelines.sharding.plan import make_plan
from pipelines.sharding.sources import SourceSpec
src, out = sys.argv[1], sys.argv[2]
shutil.rmtree(out, ignore_errors=True)
started = time.perf_counter()
plan = make_plan(SourceSpec(src), out, 10_000)
seconds = time.perf_counter() - started
# VmHWM, not ru_maxrss: the latter carries the parent's peak across fork and exec
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rows": plan.num_inputs, "shards": plan.num_shards, "seconds": seconds, "peak_rss_mb": peak_kb / 1024}))
"""


def write_lists(folder: Path, rows: int, fmt: str) -> None:
    if (folder / "_done").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    per_file = rows // FILES
    for f in range(FILES):
        ids = range(f * per_file, (f + 1) * per_file)
        urls = [f"https://images.example.com/{i % 997:03d}/{i:010d}.jpg" for i in ids]
        if fmt == "parquet":
            captions = [f"a photo of thing {i}" for i in ids]
            pq.write_table(pa.table({"url": urls, "caption": captions}), folder / f"part-{f:03d}.parquet")
        else:
            (folder / f"part-{f:03d}.txt").write_text("\n".join(urls) + "\n")
    (folder / "_done").write_text("")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--work", default=str(REPO / "bench" / "out" / "plan"))
    args = parser.parse_args(argv)
    print("| input | rows | shards | seconds | rows/s | driver peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for fmt in ("parquet", "txt"):
        for rows in args.rows:
            folder = Path(args.work) / f"{fmt}-{rows}"
            write_lists(folder, rows, fmt)
            done = subprocess.run([sys.executable, "-c", PLAN_ONE, str(folder / f"part-*.{fmt}"),
                                   str(Path(args.work) / "out")], cwd=REPO, capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {FILES} {fmt} files | {r['rows']:,} | {r['shards']:,} | {r['seconds']:.2f} | "
                  f"{r['rows'] / r['seconds']:,.0f} | {r['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
