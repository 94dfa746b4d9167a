"""The main job's report: the evaluation table, the loss curve and example panels in one Markdown page."""

from __future__ import annotations

import json
import os


def plot_losses(metrics_jsonl: str, png: str, weights: dict[str, float]) -> None:
    """Each logged loss term over steps, a dotted line where each epoch starts, the weights in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_jsonl)]
    terms = sorted({k for r in rows for k in r if k.startswith("loss/")})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for term in terms:
        ax.plot([r["step"] for r in rows if term in r], [r[term] for r in rows if term in r], label=term[5:])
    starts = {}
    for r in rows:
        starts.setdefault(r.get("epoch"), r["step"])
    for epoch, step in sorted((e, s) for e, s in starts.items() if e):  # epoch 0 starts at the axis
        ax.axvline(step, color="grey", linestyle=":", linewidth=1)
        ax.text(step, ax.get_ylim()[1], f" epoch {epoch}", fontsize=7, va="top", color="grey")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (unweighted terms; total = weighted sum)")
    ax.set_title("weights: " + ", ".join(f"{k} {v:g}" for k, v in weights.items()), fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def write_report(run_root: str, table: str, teacher_note: str, metrics_jsonl: str, loss_weights: dict[str, float],
                 per_class: str = "", scored_on: str = "", panels_dir: str = "eval/panels", more: str = "") -> str:
    """runs/NAME/report.md (the evaluation's Markdown `table` first, then `more` (Markdown: another split's
    table), its `per_class` tables last) beside loss_curve.png and the evaluation's panels; returns its path."""
    plot_losses(metrics_jsonl, os.path.join(run_root, "loss_curve.png"), loss_weights)
    panels = sorted(f for f in os.listdir(os.path.join(run_root, panels_dir)) if f.endswith(".png"))
    lines = [table, *([f"Scored on {scored_on}.", ""] if scored_on else []), f"Teacher: {teacher_note}.", "",
             "Methods: the trained student; the CLIP teacher alone through MaskCLIP's dense path on every task "
             "(its dense features clustered, probed and k-NN-voted for the label-free tasks), at its own grid "
             "and at the student's grid by shift-and-stitch (its own input scale, shifted passes); k-means on raw "
             "pixels and an untrained network as floors. Probes and k-NN learn from the separate probe split.", "",
             *([more, ""] if more else []), "## Training loss", "", "![loss curve](loss_curve.png)", "", "## Examples", ""]
    lines += [f"![{p}]({panels_dir}/{p})" for p in panels]
    lines += ["", "Each panel's method titles carry its mIoU (%) on that image.", "", per_class]
    path = os.path.join(run_root, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path
