"""The semantic targets on CLIP's geometry: image and text vectors in separate cones (the modality gap),
seven classes of which five are named. Under the earlier flat rule almost no pixel of a named class
gets a name as its target; under the hierarchical rule as many do as the names alone classify right,
and the unnamed classes keep their own prototypes."""

import torch
import torch.nn.functional as F

from model.prototypes import SemanticTargets, build_targets, explained_centres, semantic_log_probs

NUM_CLASSES, NUM_NAMED, DIM = 7, 5, 64
T = 0.03  # the teacher temperature of the default config


def modality_gap(pixels_per_class: int = 400, seed: int = 0):
    """Image pixels [N, D] with class labels, and the named classes' text vectors [5, D]: image-to-image
    cosines about 0.75 across classes, image-to-text about 0.25 for the right name."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(DIM, DIM, generator=g))[0]
    image_cone, text_cone, classes = basis[0], basis[1], basis[2:2 + NUM_CLASSES]
    labels = torch.arange(NUM_CLASSES).repeat_interleave(pixels_per_class)
    noise = 0.05 * torch.randn(len(labels), DIM, generator=g)
    pixels = F.normalize(image_cone + 0.5 * classes[labels] + noise, dim=-1)
    text = F.normalize(text_cone + 0.5 * classes[:NUM_NAMED] + 0.05 * torch.randn(NUM_NAMED, DIM, generator=g), dim=-1)
    return pixels, labels, text


def as_map(vectors: torch.Tensor) -> torch.Tensor:
    return vectors.T.reshape(1, DIM, 1, -1)


def test_the_geometry_has_clips_gap():
    pixels, labels, text = modality_gap()
    image_image = (pixels[labels == 0] @ pixels[labels == 1].T).mean()
    image_text = (pixels[labels == 0] @ text[0]).mean()
    assert 0.6 < image_image < 0.9 and 0.15 < image_text < 0.4


def test_named_pixels_get_names_under_the_hierarchical_rule_and_not_under_the_flat_one():
    pixels, labels, text = modality_gap()
    targets = build_targets(text, pixels, num_clusters=10, rule="margin", threshold=0.5)
    named = labels < NUM_NAMED
    names_alone = (pixels @ text.T).argmax(1)
    zero_shot_accuracy = (names_alone[named] == labels[named]).float().mean()
    assert zero_shot_accuracy > 0.8
    for rule, lowest, highest in (("flat", 0.0, 0.05), ("hierarchical", zero_shot_accuracy - 0.05, 1.0)):
        argmax = semantic_log_probs(as_map(pixels), targets, T, rule)[0, :, 0].argmax(0)
        right_name = (argmax[named] == labels[named]).float().mean()
        assert lowest <= right_name <= highest, (rule, right_name)
    # the unnamed classes stay on unknown prototypes
    argmax = semantic_log_probs(as_map(pixels), targets, T)[0, :, 0].argmax(0)
    assert (argmax[~named] >= NUM_NAMED).float().mean() > 0.9


def test_centres_of_named_classes_are_explained_by_their_margin_and_never_by_cosine():
    pixels, labels, text = modality_gap()
    targets = build_targets(text, pixels, num_clusters=7, rule="margin", threshold=0.5, seed=1)
    truth = torch.stack([(targets.centres @ pixels[labels == c].mean(0)) for c in range(NUM_CLASSES)]).argmax(0)
    assert sorted(truth.tolist()) == list(range(NUM_CLASSES))  # one centre per class
    assert torch.equal(targets.explained, truth < NUM_NAMED)
    assert not explained_centres(targets.centres, text, "cosine", 0.8).any()  # the earlier rule: all kept
    # why not the names' softmax: at CLIP's temperature it is sure of a name for the unnamed classes too
    confidence = (F.normalize(targets.centres, dim=-1) @ text.T / 0.01).softmax(1).max(1).values
    assert confidence[truth >= NUM_NAMED].min() > 0.9


def test_the_class_free_labels_name_known_pixels_and_cluster_the_rest():
    pixels, labels, text = modality_gap()
    targets = build_targets(text, pixels, num_clusters=7, rule="margin", threshold=0.5, seed=1)
    argmax = semantic_log_probs(as_map(pixels), targets, T)[0, :, 0].argmax(0)
    named = labels < NUM_NAMED
    assert (argmax[named] >= NUM_NAMED).float().mean() < 0.1  # under 10% of seen-class pixels unknown
    # each unnamed class is one unknown prototype
    for c in range(NUM_NAMED, NUM_CLASSES):
        ids = argmax[labels == c]
        assert (ids == ids.mode().values).float().mean() > 0.9 and ids.mode().values >= NUM_NAMED


def test_names_only_targets_are_the_zero_shot_softmax():
    pixels, _, text = modality_gap()
    got = semantic_log_probs(as_map(pixels), SemanticTargets.names_only(text), T)
    assert torch.allclose(got, F.log_softmax(as_map(pixels).transpose(0, 1).flatten(1).T @ text.T / T, dim=1).T
                          .reshape(1, NUM_NAMED, 1, -1), atol=1e-5)
