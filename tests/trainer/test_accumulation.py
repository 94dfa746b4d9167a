"""Gradient accumulation through DeepSpeed with the trainer's own step: 4 micro-batches of 1 image move
the weights exactly as one batch of 4 does, for the terms that decompose over images.

The embedding and semantic terms are per-pixel means, so they decompose; the contrastive term does
not (its negatives are every segment of the batch), nor do batch-norm statistics: the test runs
the first two with batch norm in eval mode, in one real single-rank DeepSpeed engine per setting.
"""

import copy
import os
import socket

import deepspeed
import pytest
import torch

from common.config import build_config
from model.network import build_network
from model.prototypes import SemanticTargets
from trainer.config import TrainConfig
from trainer.step import build_optimizer, deepspeed_config, forward_losses


@pytest.fixture(scope="module")
def single_rank():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = dict(os.environ)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


def config(micro: int, accumulation: int) -> TrainConfig:
    return build_config(TrainConfig, {
        "data": {"shards": "-", "clip": "-", "batch_size_per_worker": micro},
        "network": {"backbone": "small", "output_stride": 4, "embedding_dim": 8, "clip_dim": 6},
        "views": {"crop_size": 16}, "loss": {"contrastive_weight": 0},
        "optim": {"lr": 0.5, "momentum": 0, "weight_decay": 0, "grad_clip": 0, "grad_accumulation_steps": accumulation}})


def batch(images: slice) -> dict:
    g = torch.Generator().manual_seed(0)
    full = {"images": torch.rand(8, 3, 16, 16, generator=g), "regions": torch.zeros(8, 16, 16, dtype=torch.long),
            "clip": torch.randn(8, 6, 4, 4, generator=g), "source": torch.arange(4).repeat(2)}
    views = list(range(8))[images] + [v + 4 for v in range(4)[images]]  # both views of those images
    return {k: v[views] for k, v in full.items()}


def trained_weights(net: torch.nn.Module, cfg: TrainConfig, micro_batches: list[dict]) -> dict:
    unit = torch.nn.functional.normalize(torch.randn(5, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    targets = SemanticTargets(unit[:3], unit[3:], torch.tensor([True, False]))
    engine, _, _, _ = deepspeed.initialize(model=net, optimizer=build_optimizer(net, cfg), config=deepspeed_config(cfg))
    engine.module.eval()  # batch norm on its running statistics: a per-image function
    boundaries = []
    for micro in micro_batches:
        engine.backward(forward_losses(engine, micro, targets, cfg)["total"])
        boundaries.append(engine.is_gradient_accumulation_boundary())
        engine.step()
    assert boundaries == [False] * (len(micro_batches) - 1) + [True]  # one optimizer step, at the end
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


def test_four_micro_batches_step_like_one_batch_four_times_larger(single_rank):
    torch.manual_seed(0)
    net = build_network(config(4, 1).network)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    one = trained_weights(copy.deepcopy(net), config(4, 1), [batch(slice(0, 4))])
    four = trained_weights(copy.deepcopy(net), config(1, 4), [batch(slice(i, i + 1)) for i in range(4)])
    moved = max((one[k] - start[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert moved > 1e-3  # the step did move the weights
    for k in one:
        torch.testing.assert_close(four[k], one[k], atol=1e-6, rtol=1e-5, msg=k)
