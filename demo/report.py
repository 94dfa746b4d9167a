"""The main job's report: the evaluation table, the loss curve and example panels in one Markdown page."""

from __future__ import annotations

import json
import os


def plot_losses(metrics_jsonl: str, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_jsonl)]
    terms = sorted({k for r in rows for k in r if k.startswith("loss/")})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for term in terms:
        ax.plot([r["step"] for r in rows if term in r], [r[term] for r in rows if term in r], label=term[5:])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def write_report(run_root: str, table: str, teacher_note: str, metrics_jsonl: str) -> str:
    """runs/NAME/report.md (the evaluation's Markdown `table` first) beside loss_curve.png and the
    evaluation's panels; returns its path."""
    plot_losses(metrics_jsonl, os.path.join(run_root, "loss_curve.png"))
    panels = sorted(f for f in os.listdir(os.path.join(run_root, "eval", "panels")) if f.endswith(".png"))
    lines = [table, f"Teacher: {teacher_note}.", "",
             "Methods: the trained student; k-means on raw pixels and on an untrained network (unsupervised "
             "baselines); the CLIP teacher alone through MaskCLIP's dense path (language-driven and unseen "
             "baselines); linear probes on frozen pixel embeddings.", "",
             "## Training loss", "", "![loss curve](loss_curve.png)", "", "## Examples", ""]
    lines += [f"![{p}](eval/panels/{p})" for p in panels]
    path = os.path.join(run_root, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path
