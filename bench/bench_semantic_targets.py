"""What the semantic term's targets say on a labelled split: the teacher's own per-pixel distribution
under each target rule and each rule for which centres a name explains, before any student.

    python -m bench.bench_semantic_targets --run runs/demo --split val       # choose here (dev; or probe)
    python -m bench.bench_semantic_targets --run runs/demo --split test      # report here (test)

`--run` is a main-job run folder (its embed output holds the prototypes and names the teacher). For
seen-class pixels: how many the names alone classify right (the teacher's zero-shot accuracy), and
under each rule how many get a known name as their target's argmax and how many the right one; for
unseen-class pixels, how many get an unknown prototype. Flat rows ignore the explain rule (all
centres are unknown prototypes there, as before).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

from formats.datasets import open_dataset
from formats.prototypes import load_prototypes
from formats.sidecar import read_embed_manifest
from formats.teacher_weights import load_teacher
from model.clip_teacher import TeacherConfig, dense_features
from model.prototypes import SemanticTargets, explained_centres, semantic_log_probs

TEMPERATURE = 0.03  # the default teacher temperature (model.objective.LossConfig)
EXPLAIN = (("cosine", 0.8), ("margin", 0.3), ("margin", 0.4), ("margin", 0.5), ("margin", 0.7))


def teacher_outputs(run: str, split: str) -> tuple[torch.Tensor, np.ndarray, list[str], dict]:
    """Dense teacher features of every image, upsampled [N, D, H, W], masks [N, H, W], class names, prototypes."""
    clip = os.path.join(run, "clip")
    manifest, protos = read_embed_manifest(clip), load_prototypes(clip)
    teacher = load_teacher(TeacherConfig(manifest["clip_model"], manifest["pretrained"]))
    root = os.path.join(run, "corpus", split)
    data = open_dataset("generic", root)
    features, masks = [], []
    for sample in data:
        x = torch.from_numpy(sample.image.copy()).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(manifest["image_size"],) * 2, mode="bilinear", align_corners=False)
        dense = dense_features(teacher, teacher.normalise(x), manifest["last_block"])
        features.append(F.interpolate(dense.float(), size=sample.mask.shape, mode="bilinear", align_corners=False))
        masks.append(sample.mask)
    return torch.cat(features), np.stack(masks), data.class_names, protos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--split", default="probe", help="a folder under RUN/corpus with images/ and masks/")
    parser.add_argument("--unseen", nargs="*", default=["dotted"])
    parser.add_argument("--leave-out", nargs="*", default=[],
                        help="seen classes whose pixels are not counted (e.g. background)")
    args = parser.parse_args(argv)
    features, masks, classes, protos = teacher_outputs(args.run, args.split)
    names = list(protos["names"])
    name_class = torch.tensor([classes.index(n) for n in names])
    truth = torch.from_numpy(masks).long()
    counted = torch.tensor([c for n, c in zip(names, name_class.tolist()) if n not in args.leave_out])
    seen_px = torch.isin(truth, counted)
    unseen_px = torch.isin(truth, torch.tensor([classes.index(n) for n in args.unseen]))
    zero_shot = name_class[torch.einsum("ndhw,cd->nchw", F.normalize(features, dim=1),
                                        F.normalize(protos["known"].float(), dim=-1)).argmax(1)]
    left_out = f" (not counting {', '.join(args.leave_out)})" if args.leave_out else ""
    print(f"{args.run}, split {args.split}: {int(seen_px.sum())} seen-class pixels{left_out}, "
          f"{int(unseen_px.sum())} unseen; "
          f"{len(protos['centres'])} centres")
    print(f"teacher zero-shot accuracy on seen-class pixels (names alone): "
          f"{100 * (zero_shot[seen_px] == truth[seen_px]).float().mean():.1f}%\n")
    print("| targets | centres a name explains | seen px: a known name | seen px: the right name "
          "| unseen px: an unknown prototype |")
    print("|---|---|---|---|---|")
    centres = protos["centres"].float()
    for rule in ("flat", "hierarchical"):
        for explain, threshold in (EXPLAIN if rule == "hierarchical" else EXPLAIN[:1]):
            explained = explained_centres(centres, protos["known"], explain, threshold)
            targets = SemanticTargets(protos["known"].float(), centres, explained)
            argmax = semantic_log_probs(features, targets, TEMPERATURE, rule).argmax(1)
            known = argmax < len(names)
            right = known & (name_class[argmax.clamp(max=len(names) - 1)] == truth)
            label = f"{explain} {threshold}" if rule == "hierarchical" else "- (all unknown)"
            print(f"| {rule} | {label}: {int(explained.sum())} of {len(centres)} "
                  f"| {100 * known[seen_px].float().mean():.1f}% | {100 * right[seen_px].float().mean():.1f}% "
                  f"| {100 * (~known[unseen_px]).float().mean():.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
