"""The class-free head's parameters for one model file and the names given at test time.

Training saw known names only; at test time the user's names are the known classes (their text
prototypes), the model's centres are flagged against those names by the rule the embed job used, and
the centres no name explains are the unknown classes. A vocabulary, if given, names each of them by its
nearest entries (or they stay `unknown-i`, their best candidates listed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from formats.prototypes import upgrade
from model.clip_teacher import Teacher, text_prototypes
from model.inference import CLASSFREE_DECISIONS, classfree_names, name_prototypes
from model.prototypes import explained_centres


@dataclass(frozen=True)
class ClassfreeHead:
    params: dict[str, torch.Tensor]  # known, centres, explained, decision: model.inference.HEADS["classfree"]
    names: list[str]  # the legend: known names, then unknown-i (and the vocabulary's name for it)
    candidates: list[list[str]]  # per unknown class, the vocabulary's best entries (empty without one)


def classfree_head(teacher: Teacher, prototypes: dict, names: list[str], vocabulary: list[str] = (),
                  decision: str = "flat") -> ClassfreeHead:
    protos = upgrade(prototypes)
    known = text_prototypes(teacher, names)
    centres = protos["centres"].float()
    explained = explained_centres(centres, known, protos["explain"]["rule"], protos["explain"]["threshold"])
    candidates: list[list[str]] = [[] for _ in range(int((~explained).sum()))]
    if vocabulary and candidates:
        best = name_prototypes(centres[~explained], text_prototypes(teacher, list(vocabulary)))
        candidates = [[vocabulary[i] for i in row] for row in best.tolist()]
    legend = classfree_names(names, [c[0] if c else "" for c in candidates])
    params = {"known": known, "centres": centres, "explained": explained,
              "decision": torch.tensor(CLASSFREE_DECISIONS.index(decision))}
    return ClassfreeHead(params, legend, candidates)
