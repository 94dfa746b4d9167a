"""Precomputed against online teacher on the demo corpus: the quick profile, the same teacher (cached by
its recipe), the same seeds, both modes; quality from each run's report and training images/s from
its metrics.

    python -m bench.bench_teacher_modes --seeds 0 1 --runs-root bench/out/teacher_modes
    python -m bench.bench_teacher_modes --seeds 0 1 --runs-root bench/out/teacher_modes --tabulate-only

Each run is `pipelines/main.py --quick --name MODE-sSEED --train-overrides loss.semantic_weight=4,
run.seed=SEED`, with `--clip-storage none` for the online mode. Runs already reported are not redone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = {"precomputed": [], "online": ["--clip-storage", "none"]}
COLUMNS = {"language mIoU": 0, "unsupervised mIoU": 2, "mIoU unseen": 5, "hIoU": 6, "probe mIoU": 7}  # report.md cells


def seeded_runs(doc: str, seeds: list[int], out: str, argv: list[str] | None,
                add: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[argparse.Namespace, Path]:
    """The command line the benches over seeded demo runs share (--seeds, --runs-root, --tabulate-only, and
    what `add` declares), parsed, and the runs' folder, made."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--runs-root", default=str(REPO / "bench" / "out" / out))
    parser.add_argument("--tabulate-only", action="store_true")
    if add:
        add(parser)
    args = parser.parse_args(argv)
    root = Path(args.runs_root)
    root.mkdir(parents=True, exist_ok=True)
    return args, root


def run(root: Path, name: str, args: list[str], split: str = "dev") -> None:
    """`pipelines/main.py --quick --name NAME --eval-split SPLIT ARGS` under `root`, unless its report is there
    already. A comparison that chooses a setting scores the dev split; a figure to report, the test split."""
    if (root / name / "report.md").exists():
        return
    with open(root / f"{name}.log", "w") as log:
        subprocess.run([sys.executable, "pipelines/main.py", "--quick", "--name", name, "--runs-root", str(root),
                        "--eval-split", split, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)


def student_row(report: Path) -> list[float]:
    row = next(line for line in report.read_text().splitlines() if line.startswith("| student |"))
    return [float(c) for c in row.strip("|").split("|")[1:]]


def student_scores(report: Path) -> dict[str, float]:
    """The student's row of a report.md by column header; a run whose report lacks a task lacks its columns."""
    lines = report.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    names = [c.strip() for c in header.strip("|").split("|")[1:]]
    row = next(line for line in lines if line.startswith("| student |"))
    cells = [c.strip().split(" ")[0] for c in row.strip("|").split("|")[1:]]
    return {n: float(c) for n, c in zip(names, cells) if c != "-"}


def training_rate(metrics: Path) -> tuple[float, float]:
    logged = [json.loads(line) for line in metrics.read_text().splitlines()][1:]  # the first window holds start-up
    return (statistics.mean(m["images_per_s"] for m in logged), statistics.mean(m["data_wait_fraction"] for m in logged))


def cell(values: list[float], fmt: str = ".1f") -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def main(argv: list[str] | None = None) -> int:
    args, root = seeded_runs(__doc__, [0, 1], "teacher_modes", argv)
    if not args.tabulate_only:
        for seed in args.seeds:
            for mode, args in MODES.items():
                run(root, f"{mode}-s{seed}", ["--train-overrides", f"loss.semantic_weight=4,run.seed={seed}", *args])
    print("| teacher | " + " | ".join(COLUMNS) + " | train images/s | data wait | sidecar KB/image |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    for mode in MODES:
        names = [f"{mode}-s{seed}" for seed in args.seeds]
        rows = [student_row(root / n / "report.md") for n in names]
        rates = [training_rate(root / n / "logs" / n / "metrics.jsonl") for n in names]
        sidecar = [line for n in names for line in (root / f"{n}.log").read_text().splitlines()
                   if line.startswith("sidecar storage:")]
        kb = float(sidecar[0].split()[2]) if sidecar else float("nan")
        print(f"| {mode} | " + " | ".join(cell([r[i] for r in rows]) for i in COLUMNS.values())
              + f" | {cell([r[0] for r in rates], '.0f')} | {cell([100 * r[1] for r in rates], '.1f')}% | {kb:.1f} |")
    print(f"\nstudent, {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}): mean ± sd")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
