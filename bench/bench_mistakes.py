"""How long a user waits for the one line a mistake gets, each job started as a user starts it:

    python -m bench.bench_mistakes --repeat 3

Runs every case of tests/test_user_mistakes.py as its own process (`python pipelines/JOB.py ...`, the
trainer as `python -m trainer.train`) in a fresh folder, and reports per case the median seconds from
launch to exit, imports included, with the exit status and the number of lines on stderr. The
issue's aim is 5 s; most of it is importing torch, open_clip and Ray, which this box's speed moves.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.test_user_mistakes import MISTAKES

REPO = Path(__file__).resolve().parents[1]


def command(job: str) -> list[str]:
    return [sys.executable, "-m", "trainer.train"] if job == "train" else [sys.executable, str(REPO / "pipelines" / f"{job}.py")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    print("| mistake | exit status | stderr lines | seconds (median of %d) |\n|---|---|---|---|" % args.repeat)
    for case in sorted(MISTAKES):
        job, argv, _ = MISTAKES[case]
        seconds, done = [], None
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                done = subprocess.run(command(job) + argv(Path(folder)), cwd=folder, env=env, capture_output=True,
                                      text=True, timeout=300)
                seconds.append(time.perf_counter() - started)
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        print(f"| {case} | {done.returncode} | {len(lines)} | {statistics.median(seconds):.1f} |", flush=True)


if __name__ == "__main__":
    main()
