"""What each term of the objective adds, on the demo corpus: contrastive only; + embedding consistency;
+ semantic consistency over the known names alone; + semantic over the names and the unknown
prototypes (the full method). The quick profile, one cached teacher for every run, the same seeds.

    python -m bench.bench_ablation --seeds 0 1 2 --runs-root bench/out/ablation
    python -m bench.bench_ablation --seeds 0 1 2 --runs-root bench/out/ablation --tabulate-only

Each run is `pipelines/main.py --quick --name ROW-sSEED --train-overrides WEIGHTS,run.seed=SEED`
(`--num-unknown 0` for the names-only row: no centres, so the target is CLIP's softmax over the
names). The semantic weight is the quick profile's 4. Runs already reported are not redone; the table
is every run's report.md, the student's row, mean +- sd over the seeds.
"""

from __future__ import annotations

from bench.bench_teacher_modes import cell, run, seeded_runs, student_scores

ROWS = {
    "contrastive": ("contrastive only", ["--train-overrides", "loss.embedding_weight=0,loss.semantic_weight=0"]),
    "embedding": ("+ embedding", ["--train-overrides", "loss.semantic_weight=0"]),
    "names": ("+ semantic, known names only", ["--train-overrides", "loss.semantic_weight=4", "--num-unknown", "0"]),
    "full": ("+ semantic, names and unknown", ["--train-overrides", "loss.semantic_weight=4"]),
}
# report.md columns of the student's row (the names-only row has no class-free columns: no unknown prototypes)
COLUMNS = ("language mIoU", "mIoU unseen", "hIoU", "unsupervised mIoU", "probe mIoU", "class-free mIoU",
           "seen px called unknown")


def main(argv: list[str] | None = None) -> int:
    args, root = seeded_runs(__doc__, [0, 1, 2], "ablation", argv, lambda parser: parser.add_argument(
        "--split", choices=("test", "dev"), default="test",
        help="the corpus split each run's report scores (the table's figures: test)"))
    if not args.tabulate_only:
        for seed in args.seeds:
            for key, (_, extra) in ROWS.items():
                flags = [f"{extra[1]},run.seed={seed}" if f == extra[1] else f for f in extra]
                run(root, f"{key}-s{seed}", flags, split=args.split)
    print("| objective | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for key, (title, _) in ROWS.items():
        rows = [student_scores(root / f"{key}-s{seed}" / "report.md") for seed in args.seeds
                if (root / f"{key}-s{seed}" / "report.md").exists()]
        print(f"| {title} ({len(rows)} seeds) | "
              + " | ".join(cell(values) if (values := [r[c] for r in rows if c in r]) else "-" for c in COLUMNS) + " |")
    print(f"\nstudent, seeds {', '.join(map(str, args.seeds))}: mean ± sd; the teacher's own row is in each report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
