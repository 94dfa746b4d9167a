"""Inference: tiled dense outputs, text-driven, clustered, class-free and k-NN labels."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.inference import (
    classfree_labels,
    classfree_names,
    cluster_labels,
    dense_outputs,
    fit_clusters,
    knn_labels,
    language_labels,
    name_prototypes,
    segment_samples,
    thresholded_labels,
)
from model.network import ModelOutput, NetworkConfig, build_network
from model.prototypes import SemanticTargets


class Pointwise(nn.Module):
    """A backbone with no spatial context: tiles must reproduce the whole-image output exactly."""

    out_channels = 8

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(3, 8, 1))

    def forward(self, x):
        return self.body(x)


def pointwise_net():
    net = build_network(NetworkConfig(backbone="small", output_stride=4, embedding_dim=6, clip_dim=5))
    net.backbone = Pointwise()
    net.embed = nn.Conv2d(8, 6, 1)
    return net.eval()


def test_sliding_window_equals_whole_image_for_a_pointwise_network():
    net = pointwise_net()
    images = torch.rand(2, 3, 70, 90)  # not multiples of the window, nor of the stride
    whole = dense_outputs(net, images)
    tiled = dense_outputs(net, images, window=32, overlap=0.5)
    assert whole.embeddings.shape == tiled.embeddings.shape == (2, 6, 18, 23)
    assert torch.allclose(whole.embeddings, tiled.embeddings, atol=1e-5)
    assert torch.allclose(whole.clip, tiled.clip, atol=1e-5)


def test_language_and_classfree_labels_pick_the_nearest_prototype():
    clip = torch.zeros(1, 3, 2, 2)
    clip[0, 0, 0] = 1  # top row along e0
    clip[0, 2, 1] = 1  # bottom row along e2
    out = ModelOutput(embeddings=F.normalize(clip, dim=1), clip=clip)
    text = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.1, 0.0]])
    labels = language_labels(out, text, (4, 4))
    assert labels.shape == (1, 4, 4) and (labels[0, 0] == 1).all()
    # two centres: along e0, which a name explains, and along e2, which none does
    targets = SemanticTargets(text, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), torch.tensor([True, False]))
    labels = classfree_labels(out, targets, (2, 2))
    assert labels.tolist() == [[[1, 1], [2, 2]]]
    assert classfree_names(["sky", "cat"], ["", "dog"]) == ["sky", "cat", "unknown-0", "unknown-1 (dog)"]
    vocabulary = torch.tensor([[0.0, 1.0, 0.0], [0.1, 0.0, 1.0], [0.0, 0.5, 0.5]])
    assert name_prototypes(targets.unknown, vocabulary, top=2).tolist() == [[1, 2]]


def test_classfree_levels_call_a_pixel_known_where_the_explained_share_wins():
    # two centres, e0 explained and e1 not, three names the centres do not touch (e2, e3, -e3)
    targets = SemanticTargets(torch.tensor([[0.0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, -1]]),
                              torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0]]), torch.tensor([True, False]))
    # a pixel 0.02 nearer e0 than e1 in cosine: the explained share is sigmoid(0.02 / 0.03) = 0.66, the
    # unexplained centre 0.34; its best name (e2, cosine 0.01) holds 0.41 of the names, 0.27 in all
    near_known = F.normalize(torch.tensor([0.7 + 0.01, 0.7 - 0.01, 0.01, 0.0]), dim=0)
    near_unknown = F.normalize(torch.tensor([0.6, 0.8, 0.01, 0.0]), dim=0)
    clip = torch.stack([near_known, near_unknown], 1).reshape(1, 4, 1, 2)
    out = ModelOutput(embeddings=clip, clip=clip)
    assert classfree_labels(out, targets, (1, 2), "levels").tolist() == [[[1, 3]]]
    assert classfree_labels(out, targets, (1, 2), "flat").tolist() == [[[3, 3]]]  # 0.27 < 0.34: unknown


def test_fit_clusters_recovers_planted_centres_and_labels_pixels():
    g = torch.Generator().manual_seed(0)
    directions = torch.eye(6)[:3]
    truth = torch.randint(3, (600,), generator=g)
    x = F.normalize(directions[truth] + 0.2 * torch.randn(600, 6, generator=g), dim=-1)
    centres = fit_clusters(x, 3, num_restarts=3)
    assert torch.allclose((centres @ directions.T).max(0).values, torch.ones(3), atol=0.05)
    out = ModelOutput(embeddings=directions.T.reshape(1, 6, 1, 3), clip=torch.zeros(1, 1, 1, 3))
    labels = cluster_labels(out, centres, (1, 3))[0, 0]
    assert sorted(labels.tolist()) == [0, 1, 2]


def test_knn_labels_each_segment_by_the_vote_of_its_k_nearest_training_segments():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    # an image whose left half points at a, right half at b: two segments of its own
    grid = torch.stack([a] * 2 + [b] * 2).T.reshape(3, 1, 4).expand(3, 2, 4).contiguous()
    out = ModelOutput(grid[None], grid[None])
    # training segments: three of class 0 about a, two of class 1 about b, one of class 0 leaning to b
    protos = F.normalize(torch.stack([a, a + 0.1 * b, a + 0.2 * b, b, b + 0.1 * a, b + 0.6 * a]), dim=-1)
    params = {"prototypes": protos, "labels": torch.tensor([0, 0, 0, 1, 1, 0]), "num_classes": torch.tensor(3),
              "k": torch.tensor(3), "num_segments": torch.tensor(4)}
    labels = knn_labels(out, params, (2, 4))
    assert labels.tolist() == [[[0, 0, 1, 1], [0, 0, 1, 1]]]  # b's 3 nearest: two of class 1, one of class 0
    params["k"] = torch.tensor(6)  # all six vote: class 0 everywhere
    assert knn_labels(out, params, (2, 4)).unique().tolist() == [0]


def test_segment_samples_label_each_segment_by_its_cells_majority():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    grid = torch.stack([a, a, b, b]).T.reshape(2, 1, 4)
    mask = np.array([[3, 255, 7, 7]], np.uint8)  # stride 1: the cell centres are the pixels
    rows, labels = segment_samples(ModelOutput(grid[None], grid[None]), mask, 1, num_segments=3)
    assert rows.shape == (3, 2) and sorted(labels.tolist()) == [3, 7, 255]  # a third, empty segment: ignored
    assert np.allclose(rows[labels == 3], [1.0, 0.0]) and np.allclose(rows[labels == 7], [0.0, 1.0])


def test_a_background_threshold_labels_background_where_no_name_is_sure():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    pixels = torch.stack([a, F.normalize(a + b, dim=0), b + 0.2 * a]).T.reshape(3, 1, 3)  # sure, torn, sure
    out = ModelOutput(pixels[None], pixels[None])
    labels = thresholded_labels(out, torch.stack([a, b]), background=0, threshold=0.6, size=(1, 3))
    assert labels.tolist() == [[[1, 0, 2]]]  # names shift past the background's id 0
    assert thresholded_labels(out, torch.stack([a, b]), background=2, threshold=0.4, size=(1, 3)).tolist() == \
        [[[0, 0, 1]]]  # torn at 0.5 each: above 0.4, so a name (the first of the tie)
