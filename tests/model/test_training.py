"""A few hundred steps of the full objective on a handful of synthetic scenes: the loss falls and the
embeddings, clustered, follow the ground-truth regions better than at initialisation."""

import random

import numpy as np
import torch

from demo.synth import CLASSES, render_scene
from model.clip_teacher import TeacherConfig, dense_features, load_teacher, text_prototypes
from model.inference import cluster_labels, dense_outputs, fit_clusters
from model.metrics import apply_mapping, confusion_matrix, hungarian_match, segmentation_scores
from model.network import NetworkConfig, build_network
from model.objective import LossConfig, compute_losses
from model.prototypes import SemanticTargets
from model.segmenter import SegmenterConfig
from model.superpixels import SuperpixelConfig, superpixels
from model.views import ViewConfig, collate_views

SIZE = 64


def region_miou(net, scenes) -> float:
    """Mean over images of the mIoU of k-means on that image's embeddings (k = classes present),
    Hungarian-matched to its ground truth: how well embeddings follow the true regions."""
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1) for s in scenes]).float() / 255
    net.eval()
    out = dense_outputs(net, images)
    net.train()
    scores = []
    for i, scene in enumerate(scenes):
        present = np.unique(scene.mask)
        centres = fit_clusters(out.embeddings[i].flatten(1).T, len(present))
        labels = cluster_labels(out._replace(embeddings=out.embeddings[i:i + 1]), centres, (SIZE, SIZE))
        conf = confusion_matrix(labels, np.searchsorted(present, scene.mask), len(present))
        scores.append(segmentation_scores(apply_mapping(conf, hungarian_match(conf)))["miou"])
    return float(np.mean(scores))


def test_training_lowers_the_loss_and_aligns_embeddings_with_regions():
    torch.manual_seed(0)
    scenes = [render_scene(i, SIZE) for i in range(16)]
    teacher = load_teacher(TeacherConfig(model="tiny-vit"))  # random weights: a fixed, image-dependent target
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1) for s in scenes])
    normalised = (images.float() / 255 - torch.tensor(teacher.mean).view(3, 1, 1)) / torch.tensor(teacher.std).view(3, 1, 1)
    dense = dense_features(teacher, normalised)  # [16, 64, 8, 8]
    targets = SemanticTargets.names_only(text_prototypes(teacher, list(CLASSES[1:])))
    sp = SuperpixelConfig(scale=200, min_size=60)
    samples = [(images[i], torch.from_numpy(superpixels(s.image, sp).astype(np.int64)), dense[i])
               for i, s in enumerate(scenes)]

    net = build_network(NetworkConfig(backbone="small", output_stride=4, embedding_dim=32, clip_dim=teacher.embed_dim))
    cfg = LossConfig(segmenter=SegmenterConfig(grid=(3, 3), num_iters=10))
    views = ViewConfig(crop_size=48, scale=(0.8, 1.25))
    optimiser = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    rng = random.Random(0)
    before = region_miou(net, scenes)
    history = []
    for _ in range(300):
        batch = collate_views(rng.sample(samples, 8), views, 12, rng)
        losses = compute_losses(net(batch["images"]), batch["regions"], batch["clip"], batch["source"], targets, cfg)
        optimiser.zero_grad()
        losses["total"].backward()
        optimiser.step()
        history.append({k: v.item() for k, v in losses.items()})
    after = region_miou(net, scenes)

    first, last = history[:20], history[-20:]
    for term, ratio in (("total", 0.8), ("contrastive", 0.8), ("embedding", 0.9), ("semantic", 0.8)):
        start, end = np.mean([h[term] for h in first]), np.mean([h[term] for h in last])
        assert end < ratio * start, (term, start, end)
    print(f"region mIoU {before:.3f} -> {after:.3f}; loss", {k: (round(np.mean([h[k] for h in first]), 3), round(np.mean([h[k] for h in last]), 3)) for k in first[0]})
    assert after > before + 0.04, (before, after)
