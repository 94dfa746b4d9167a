"""Each loss on a tiny case with a hand-computed value, and the contrastive loss's preference for agreement."""

import math

import torch

from model.losses.contrastive import pixel_segment_loss
from model.losses.embedding import embedding_consistency
from model.losses.semantic import semantic_consistency
from model.objective import regions_on_grid
from model.prototypes import SemanticTargets, semantic_log_probs
from model.segmenter import SegmenterConfig, Segments, segment


def three_pixels():
    """p0, p1 along e0 in region 0 (one segment each); p2 along e1 alone in region 1."""
    emb = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).view(1, 2, 1, 3)
    seg = Segments(labels=torch.tensor([[[0, 1, 2]]]), image=torch.tensor([0, 0, 0]), region=torch.tensor([0, 0, 1]))
    return emb, seg


def test_contrastive_loss_hand_computed():
    emb, seg = three_pixels()
    e = math.e
    # p0: positives {s1} (own segment excluded), all {s0: e, s1: e, s2: 1}; p1 alike;
    # p2: its region has no other segment, so its own segment is the positive
    expected = (2 * (math.log(2 * e + 1) - 1) + (math.log(e + 2) - 1)) / 3
    assert math.isclose(pixel_segment_loss(emb, seg, concentration=1.0).item(), expected, rel_tol=1e-6)
    with_own = (2 * (math.log(2 * e + 1) - math.log(2 * e)) + (math.log(e + 2) - 1)) / 3
    assert math.isclose(pixel_segment_loss(emb, seg, 1.0, exclude_own=False).item(), with_own, rel_tol=1e-6)


def test_other_ranks_segments_join_the_denominator_only():
    emb, seg = three_pixels()
    e = math.e
    # one more segment, along e0, from another rank: a negative of every pixel, never a positive
    extra = torch.tensor([[1.0, 0.0]])
    expected = (2 * (math.log(3 * e + 1) - 1) + (math.log(e + 3) - 1)) / 3
    assert math.isclose(pixel_segment_loss(emb, seg, 1.0, extra_negatives=extra).item(), expected, rel_tol=1e-6)
    empty = pixel_segment_loss(emb, seg, 1.0, extra_negatives=torch.zeros(0, 2))
    assert torch.equal(empty, pixel_segment_loss(emb, seg, 1.0))
    # the gradient reaches this rank's embeddings only
    emb.requires_grad_(True)
    extra.requires_grad_(True)
    pixel_segment_loss(emb, seg, 1.0, extra_negatives=extra.detach()).backward()
    assert emb.grad is not None and extra.grad is None


def test_contrastive_loss_prefers_embeddings_that_agree_with_regions():
    g = torch.Generator().manual_seed(0)
    regions = torch.zeros(2, 8, 8, dtype=torch.long)
    regions[:, :, 4:] = 1
    regions[:, 4:, :] += 2  # four quadrant regions per image
    directions = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1)
    agree = directions[regions + 4 * torch.arange(2).view(2, 1, 1)].permute(0, 3, 1, 2)
    agree = torch.nn.functional.normalize(agree + 0.1 * torch.randn(agree.shape, generator=g), dim=1)
    shuffled = agree.flatten(2)[:, :, torch.randperm(64, generator=g)].view_as(agree)
    cfg = SegmenterConfig(grid=(2, 2), num_iters=10)
    loss = {name: pixel_segment_loss(e, segment(e, regions, cfg), 16.0).item()
            for name, e in (("agree", agree), ("shuffled", shuffled))}
    assert loss["agree"] < loss["shuffled"] - 1.0, loss


def test_embedding_consistency_hand_computed():
    student = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    teacher = torch.tensor([4.0, 3.0]).view(1, 2, 1, 1)
    assert math.isclose(embedding_consistency(student, teacher, "cosine").item(), 1 - 24 / 25, rel_tol=1e-6)
    assert math.isclose(embedding_consistency(student, teacher, "l1").item(), 1.0, rel_tol=1e-6)
    valid = torch.tensor([[[True, False]]])
    two = torch.cat([student, -student], -1), torch.cat([teacher, teacher], -1)
    assert math.isclose(embedding_consistency(*two, "cosine", valid).item(), 1 - 24 / 25, rel_tol=1e-6)


def test_semantic_consistency_is_kl_teacher_to_student():
    student = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    teacher = torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)  # scale does not matter: cosines
    targets = SemanticTargets.names_only(torch.eye(2))
    t_s, t_t = 0.5, 0.25
    p = [math.exp(1 / t_s), 1.0]
    q = [1.0, math.exp(1 / t_t)]
    p = [v / sum(p) for v in p]
    q = [v / sum(q) for v in q]
    expected = sum(qc * (math.log(qc) - math.log(pc)) for pc, qc in zip(p, q))
    got = semantic_consistency(student, teacher, targets, t_s, t_t).item()
    assert math.isclose(got, expected, rel_tol=1e-5)
    assert semantic_consistency(teacher, teacher, targets, t_t, t_t).abs().item() < 1e-6
    assert math.isclose(semantic_consistency(student, teacher, targets, t_s, t_t, "flat").item(), expected, rel_tol=1e-5)


def test_hierarchical_targets_split_the_explained_share_over_the_names():
    # one name; two centres, the first explained: a pixel's mass on the name is its softmax weight on
    # the first centre, the rest stays on the second (the one unknown prototype)
    targets = SemanticTargets(torch.tensor([[1.0, 0.0]]), torch.eye(2), torch.tensor([True, False]))
    t = 0.1
    feature = torch.tensor([0.6, 0.8]).view(1, 2, 1, 1)
    a = torch.tensor([0.6, 0.8]).div(t).softmax(0)
    assert torch.allclose(semantic_log_probs(feature, targets, t).exp().flatten(), a, atol=1e-6)
    # two names share the explained centre's weight by the pixel's softmax over the names
    two = SemanticTargets(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.eye(2), torch.tensor([True, False]))
    names = torch.tensor([0.6, 0.8]).div(t).softmax(0)
    expected = torch.cat([a[0] * names, a[1:]])
    assert torch.allclose(semantic_log_probs(feature, two, t).exp().flatten(), expected, atol=1e-6)
    # flat: one softmax over the names and the unexplained centre
    flat = torch.tensor([0.6, 0.8, 0.8]).div(t).softmax(0)
    assert torch.allclose(semantic_log_probs(feature, two, t, "flat").exp().flatten(), flat, atol=1e-6)
    # no centre explained: the names get nothing and the loss stays finite
    none = SemanticTargets(two.known, torch.eye(2), torch.tensor([False, False]))
    assert semantic_log_probs(feature, none, t).exp()[0, :2].sum() == 0
    student = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert torch.isfinite(semantic_consistency(student, feature, none, t, t))


def test_regions_are_read_at_the_grid_cells_centres():
    regions = (torch.arange(32) // 4).expand(1, 32, 32)  # ids 0..7 in bands of 4 columns
    assert regions_on_grid(regions, (2, 2)).tolist() == [[[2, 6], [2, 6]]]  # columns 8 and 24, not 0 and 16
    assert torch.equal(regions_on_grid(regions, (32, 32)), regions)
    odd = regions_on_grid(regions[:, :30, :30], (4, 4))  # a grid that does not divide the image
    assert odd.tolist()[0][0] == [0, 2, 4, 6]  # columns 3, 11, 18 and 26


def test_the_clip_terms_skip_cells_outside_the_image():
    from model.network import ModelOutput
    from model.objective import LossConfig, compute_losses

    g = torch.Generator().manual_seed(0)
    clip = torch.randn(2, 6, 4, 4, generator=g)
    teacher = torch.randn(2, 6, 4, 4, generator=g)
    embeddings = torch.nn.functional.normalize(torch.randn(2, 5, 4, 4, generator=g), dim=1)
    valid = torch.zeros(2, 4, 4, dtype=torch.bool)
    valid[:, 1:3, 1:3] = True
    padded = teacher.clone()
    padded[:, :, ~valid[0]] = 1e3  # what a padded view's teacher says outside the image: nonsense
    regions = torch.where(valid, 0, -1)
    targets = SemanticTargets(torch.nn.functional.normalize(torch.randn(3, 6, generator=g), dim=1),
                              torch.zeros(0, 6), torch.zeros(0, dtype=torch.bool))
    cfg = LossConfig(contrastive_weight=0.0)
    out = ModelOutput(embeddings, clip)
    masked = compute_losses(out, regions, padded, torch.tensor([0, 0]), targets, cfg, valid=valid)
    crop = compute_losses(ModelOutput(embeddings[:, :, 1:3, 1:3], clip[:, :, 1:3, 1:3]), regions[:, 1:3, 1:3],
                          teacher[:, :, 1:3, 1:3], torch.tensor([0, 0]), targets, cfg)
    for term in ("embedding", "semantic"):
        assert torch.allclose(masked[term], crop[term]), term
