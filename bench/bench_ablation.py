"""What each term of the objective adds, on the demo corpus: contrastive only; + embedding consistency;
+ semantic consistency over the known names alone; + semantic over the names and the unknown
prototypes (the full method). Every row trains on one main-job run's corpus, shards, teacher and
precompute, with that run's trainer settings (the quick profile's: semantic weight 4) and the same seeds.

    python pipelines/main.py --quick --name q2 --seeds 0,1,2                       # the base run (full row)
    python -m bench.bench_ablation --run runs/q2 --seeds 0 1 2 --runs-root bench/out/ablation
    python -m bench.bench_ablation --run runs/q2 --seeds 0 1 2 --runs-root bench/out/ablation --tabulate-only

The full row is the base run's own students (RUN/train/NAME-sSEED/model.pt, trained if missing); the
others train with the trainer directly into RUNS_ROOT/train. The names-only row needs a precompute
without centres (`--num-unknown 0`: the target is CLIP's softmax over the names), made once into
RUNS_ROOT/clip-names from the run's shards and teacher. Each student is scored by the evaluate job on
the run's test split without baselines (the teacher's rows are the base run's report), and the table is
mean +- sd over the seeds of each report.json. Models and reports already there are not redone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.bench_teacher_modes import REPO, cell, seeded_runs
from common.config import parse_config
from formats.prototypes import has_prototypes
from formats.sidecar import read_embed_manifest
from pipelines.main import PROFILES, MainConfig, stage_train

ROWS = {
    "contrastive": ("contrastive only", ["loss.embedding_weight=0", "loss.semantic_weight=0"]),
    "embedding": ("+ embedding", ["loss.semantic_weight=0"]),
    "names": ("+ semantic, known names only", []),
    "full": ("+ semantic, names and unknown (the method)", []),
}
# (header, task, report.json key); the names-only row has no class-free columns: no unknown prototypes
COLUMNS = (("language mIoU", "language", "miou"), ("mIoU unseen", "unseen", "miou_unseen"),
           ("hIoU", "unseen", "hiou"), ("unsupervised mIoU", "unsupervised", "miou"), ("probe mIoU", "probe", "miou"),
           ("class-free mIoU", "classfree", "miou"), ("seen px called unknown", "classfree", "seen_pixels_unknown"))


def _run(command: list[str], log: Path) -> None:
    with open(log, "w") as out:
        subprocess.run([sys.executable, *command], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=True)


def base_config(run: Path) -> MainConfig:
    """The base run's settings as the quick profile gives them (what `main.py --quick --name RUN` trained with)."""
    return parse_config(MainConfig, ["--quick", "--name", run.name, "--runs-root", str(run.parent)], profiles=PROFILES)


def names_only_clip(cfg: MainConfig, root: Path) -> str:
    clip = root / "clip-names"
    if not has_prototypes(str(clip)):
        manifest = read_embed_manifest(cfg.path("clip"))
        _run(["pipelines/embed.py", "--input", cfg.path("shards"), "--output", str(clip), "--clip-model",
              manifest["clip_model"], "--clip-pretrained", manifest["pretrained"], "--classes",
              cfg.path("seen_classes.txt"), "--num-unknown", "0"], root / "clip-names.log")
    return str(clip)


def student(cfg: MainConfig, root: Path, row: str, seed: int) -> str:
    """The row's model file for `seed`, trained unless it is there: the full row is the base run's own."""
    if row == "full":
        return stage_train(cfg, seed)
    name = f"{row}-s{seed}"
    model = root / "train" / name / "model.pt"
    if not model.exists():
        clip = names_only_clip(cfg, root) if row == "names" else cfg.path("clip")
        # the base run's trainer command line, then this row's: a later key=value wins
        _run(["trainer/train.py", *cfg.train_args(seed), f"run.name={name}", f"run.storage_path={root / 'train'}",
              f"run.log_dir={root / 'logs'}", f"data.clip={clip}", *ROWS[row][1]], root / f"{name}.train.log")
    return str(model)


def evaluate(cfg: MainConfig, root: Path, row: str, seed: int, model: str) -> dict:
    out = root / f"{row}-s{seed}"
    if not (out / "report.json").exists():
        tasks = "language,unseen,unsupervised,probe" + ("" if row == "names" else ",classfree")
        _run(["pipelines/evaluate.py", "--checkpoint", model, "--dataset", "generic", "--data-root",
              cfg.path("corpus", "test"), "--probe-root", cfg.path("corpus", "probe"), "--unseen",
              ",".join(cfg.held_out), "--task", tasks, "--baselines", "false", "--num-panels", "0", "--output",
              str(out)], root / f"{row}-s{seed}.eval.log")
    return json.loads((out / "report.json").read_text())["tasks"]


def main(argv: list[str] | None = None) -> int:
    args, root = seeded_runs(__doc__, [0, 1, 2], "ablation", argv, lambda parser: parser.add_argument(
        "--run", required=True, help="a main-job run folder (the quick profile) whose corpus, shards and teacher "
                                     "every row shares"))
    run = Path(args.run).resolve()
    cfg = base_config(run)
    scores: dict[str, list[dict]] = {row: [] for row in ROWS}
    for seed in args.seeds:
        for row in ROWS:
            model = None if args.tabulate_only else student(cfg, root, row, seed)
            report = root / f"{row}-s{seed}" / "report.json"
            if model or report.exists():
                scores[row].append(evaluate(cfg, root, row, seed, model or ""))
    print("| objective | " + " | ".join(h for h, _, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for row, (title, _) in ROWS.items():
        cells = []
        for _, task, key in COLUMNS:
            values = [100 * s[task]["student"][key] for s in scores[row] if task in s]
            cells.append(cell(values) if values else "-")
        print(f"| {title} ({len(scores[row])} seeds) | " + " | ".join(cells) + " |")
    print(f"\nstudent, seeds {', '.join(map(str, args.seeds))}: mean ± sd, {run.name}'s test split "
          f"({os.path.relpath(cfg.path('corpus', 'test'), REPO)}); the teacher's rows are in {run.name}'s report")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
