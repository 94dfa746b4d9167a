"""What the evaluation leaves for people: report.md's table in percent, report.json made JSON-safe, and
panels/TASK_NAME.png (image, ground truth, each method's labels, a legend)."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from common.storage import filesystem, join, write_bytes_atomic
from formats.datasets import EvalDataset
from model.metrics import IGNORE_INDEX, confusion_matrix
from pipelines.evaluation.tasks import METHOD_TITLES, TASKS
from pipelines.inference.pictures import colorize, compose, encode_png
from pipelines.inference.predict import METHODS


def panel_indices(num_images: int, num_panels: int) -> frozenset[int]:
    """Indices spread evenly over the split."""
    return frozenset(np.linspace(0, num_images - 1, min(num_panels, num_images)).round().astype(int).tolist())


def write_panels(output: str, data: EvalDataset, labels: dict[int, dict[str, np.ndarray]],
                 methods: dict[str, list[str]], results: dict[str, dict[str, dict]]) -> None:
    """panels/TASK_NAME.png: image, ground truth and each method's prediction titled with its mIoU (%) on
    this image, with a legend of the classes shown. No folder without a panel (--num-panels 0)."""
    if not labels:
        return
    fs, root = filesystem(join(output, "panels"))
    fs.makedirs(root, exist_ok=True)
    for index, by_head in sorted(labels.items()):
        sample = data[index]
        for task, by_method in results.items():
            tiles = [("image", sample.image), ("ground truth", colorize(sample.mask))]
            present = set(np.unique(sample.mask))
            for m in methods[task]:
                pred = by_head[f"{TASKS[task].head}/{m}"]
                if "cluster_to_class" in by_method[m]:  # show clusters in the colours of their matched classes
                    pred = np.asarray(by_method[m]["cluster_to_class"])[pred]
                tiles.append((f"{m} {100 * image_miou(pred, sample.mask, len(data.class_names)):.0f}", colorize(pred)))
                present |= set(np.unique(pred))
            picture = compose(tiles, data.class_names, present)
            write_bytes_atomic(fs, join(root, f"{task}_{sample.name}.png"), encode_png(picture))


def image_miou(pred: np.ndarray, mask: np.ndarray, num_classes: int) -> float:
    """mIoU of one label map over the classes in its ground truth or prediction; a pixel labelled no class
    (IGNORE_INDEX: a class-free cluster left unmatched) is wrong."""
    pred = np.where(pred == IGNORE_INDEX, num_classes, pred)
    conf = confusion_matrix(pred, mask, num_classes, num_pred=num_classes + 1)  # the last column: no class
    union = conf[:, :num_classes].sum(0) + conf.sum(1) - np.diag(conf)
    shown = union > 0
    return float((np.diag(conf)[shown] / union[shown]).mean()) if shown.any() else float("nan")


def json_safe(value: Any) -> Any:
    """NaN (a class absent from ground truth and prediction) becomes null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _cell(scores: dict[str, Any], key: str) -> str:
    """A score in percent; over seeds, mean +- sample sd."""
    sd = scores.get(f"{key}_sd")
    return _percent(scores.get(key)) + (f" ± {100 * sd:.1f}" if sd is not None and not math.isnan(sd) else "")


def seeds_summary(reports: list[dict[str, Any]], seeds: list[int], baselines_from: int | None = None) -> dict[str, Any]:
    """One report over runs that differ by their seed: each table score the mean over the seeds that have
    it, with its sample sd as KEY_sd; the rest (config, classes, teacher) the first run's. `baselines_from`:
    the seed whose run alone scored the baselines (the others' model files would give the same rows)."""
    tasks: dict[str, dict[str, dict[str, Any]]] = {}
    for task, by_method in reports[0]["tasks"].items():
        tasks[task] = {}
        for method in by_method:
            scores: dict[str, Any] = {}
            for _, key in TASKS[task].columns:
                values = [v for r in reports if (v := r["tasks"][task].get(method, {}).get(key)) is not None
                          and not math.isnan(v)]
                scores[key] = statistics.mean(values) if values else None
                scores[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
            tasks[task][method] = scores
    return {**reports[0], "checkpoint": f"{len(seeds)} runs, seeds {', '.join(map(str, seeds))} (mean ± sd)",
            "seeds": list(seeds), "tasks": tasks, "per_seed": [r["tasks"] for r in reports],
            "baselines_from": baselines_from}


def markdown_table(report: dict[str, Any]) -> str:
    """report.md: a row per method, a column per task metric, in percent with one decimal."""
    results = report["tasks"]
    columns = [(task, header, key) for task in results for header, key in TASKS[task].columns]
    methods = [m for m in METHODS if any(m in by_method for by_method in results.values())]
    # a generic folder is its own split: name the folder
    split = report["config"]["data_root"].rstrip("/").rsplit("/", 1)[-1] if report["dataset"] == "generic" \
        and "config" in report else report["split"]
    lines = [f"# {report['checkpoint']} on {report['dataset']} ({split}, {report['num_images']} images)", ""]
    if report["teacher"]["random_init"]:
        lines += [f"**WARNING: the CLIP teacher ({report['teacher']['model']}) has RANDOM weights "
                  "(pretrained=''): text-driven scores mean nothing.**", ""]
    if report.get("image_list"):
        lines += [f"Images: those named by {report['image_list']}.", ""]
    probe = report.get("probe")
    if probe:  # a probe scored on the images it learnt from would be no transfer score
        listed = f", the images named by {probe['image_list']}" if probe.get("image_list") else ""
        lines += [f"Linear probe and k-NN: fitted on {probe['root']} ({probe['split']}{listed}).", ""]
    background = report.get("background")
    if background:  # which published numbers the language columns compare with
        lines += [("Background: found by its name, prompted as any class (MaskCLIP's protocol)."
                   if background["mode"] == "prompt" else
                   f"Background: no prompt; where the best name's probability is below {background['threshold']} "
                   "(the threshold protocol of many open-vocabulary papers)."), ""]
    if report.get("baselines_from") is not None:
        lines += [f"Baselines: scored once, with seed {report['baselines_from']}'s model file (every seed's file holds "
                  "the same teacher, prototypes and architecture: the rows would be the same); no spread.", ""]
    decision = report.get("config", {}).get("classfree_decision")
    if "classfree" in results and decision:
        lines += [("Class-free: a pixel is known where the explained centres' share beats each unexplained centre, "
                   "then takes its best name (`--classfree-decision levels`)." if decision == "levels" else
                   "Class-free: one argmax over the names and the unexplained centres (`--classfree-decision flat`; "
                   "levels calls fewer pixels unknown)."), ""]
    lines += ["| method | " + " | ".join(h for _, h, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for m in methods:
        cells = [_cell(results[t][m], k) if m in results[t] else "-" for t, _, k in columns]
        lines.append(f"| {METHOD_TITLES[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_class_tables(report: dict[str, Any]) -> str:
    """A table per task: a row per class, a column per method, IoU in percent ("-": the class is in neither
    ground truth nor prediction); what a mean over classes hides."""
    lines = ["## Per-class IoU (%)", ""]
    for task, by_method in report["tasks"].items():
        methods = [m for m in METHODS if m in by_method and "iou" in by_method[m]]
        if not methods:
            continue
        lines += [f"### {task}", "", "| class | " + " | ".join(METHOD_TITLES[m] for m in methods) + " |",
                  "|---" * (len(methods) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(_percent(by_method[m]["iou"].get(name)) for m in methods) + " |"
                  for name in report["class_names"]]
        lines.append("")
    return "\n".join(lines)
