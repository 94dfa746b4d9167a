"""The network's shapes and configs, and which parameters each loss trains."""

import pytest
import torch

from model.network import NetworkConfig, build_network
from model.objective import LossConfig, compute_losses
from model.prototypes import SemanticTargets
from model.segmenter import SegmenterConfig


@pytest.mark.parametrize("backbone,stride", [("small", 4), ("small", 8), ("resnet50", 8), ("resnet50", 16),
                                             ("vit_small_patch16", 16)])
def test_every_backbone_gives_unit_embeddings_at_its_stride(backbone, stride):
    net = build_network(NetworkConfig(backbone=backbone, output_stride=stride, embedding_dim=16, clip_dim=24))
    out = net(torch.rand(2, 3, 64, 96))
    assert out.embeddings.shape == (2, 16, 64 // stride, 96 // stride)
    assert out.clip.shape == (2, 24, 64 // stride, 96 // stride)
    assert torch.allclose(out.embeddings.norm(dim=1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("bad,message", [({"backbone": "vgg"}, "unknown"), ({"backbone": "small", "output_stride": 16}, "output_stride"),
                                         ({"embedding_dim": 0}, "positive")])
def test_bad_network_configs_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        NetworkConfig(**bad)


def test_backbone_weights_file_loads(tmp_path):
    import torchvision

    reference = torchvision.models.resnet50()
    torch.save(reference.state_dict(), tmp_path / "r50.pt")
    net = build_network(NetworkConfig(backbone="resnet50", clip_dim=8, backbone_weights=str(tmp_path / "r50.pt")))
    assert torch.equal(net.backbone.body[4][0].conv1.weight, reference.layer1[0].conv1.weight)
    torch.save({"nothing": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="lacks"):
        build_network(NetworkConfig(backbone="resnet50", clip_dim=8, backbone_weights=str(tmp_path / "bad.pt")))
    with pytest.raises(ValueError, match="clip_dim is 0"):  # the trainer resolves 0 to the teacher's width
        build_network(NetworkConfig(backbone="small", output_stride=8))


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(4, 3, 32, 32, generator=g)
    regions = torch.zeros(4, 32, 32, dtype=torch.long)
    regions[:, :, 16:] = 1
    clip = torch.randn(4, 8, 4, 4, generator=g)
    return images, regions, clip, torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize("term,trains_projection", [("contrastive", False), ("embedding", True), ("semantic", True)])
def test_each_loss_trains_its_parameters_only(term, trains_projection):
    net = build_network(NetworkConfig(backbone="small", output_stride=8, embedding_dim=8, clip_dim=8))
    images, regions, clip, source = batch()
    targets = SemanticTargets(torch.randn(3, 8), torch.randn(4, 8), torch.tensor([True, False, True, False]))
    weights = {k: float(k == term) for k in ("contrastive", "embedding", "semantic")}
    cfg = LossConfig(contrastive_weight=weights["contrastive"], embedding_weight=weights["embedding"],
                     semantic_weight=weights["semantic"], segmenter=SegmenterConfig(grid=(2, 2), num_iters=3))
    clip.requires_grad_(True)
    losses = compute_losses(net(images), regions, clip, source, targets, cfg)
    assert set(losses) == {"total", term}
    losses["total"].backward()
    grad = lambda module: sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)
    assert grad(net.backbone) > 0 and grad(net.embed) > 0
    assert (grad(net.project) > 0) == trains_projection
    assert clip.grad is None or clip.grad.abs().sum() == 0  # the teacher is a fixed target
    assert targets.known.grad is None and targets.centres.grad is None


def test_switching_every_term_off_leaves_a_zero_loss():
    net = build_network(NetworkConfig(backbone="small", output_stride=8, clip_dim=8))
    images, regions, clip, source = batch()
    cfg = LossConfig(contrastive_weight=0, embedding_weight=0, semantic_weight=0)
    targets = SemanticTargets.names_only(torch.randn(3, 8))
    assert compute_losses(net(images), regions, clip, source, targets, cfg) == {"total": 0}
    with pytest.raises(ValueError, match="embedding_distance"):
        LossConfig(embedding_distance="l2")
