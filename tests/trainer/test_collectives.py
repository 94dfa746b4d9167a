"""The loop's own collectives (shard list, unknown prototypes) run on the backend's device, in a real
two-process gloo group; under NCCL that device is the GPU."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer import collectives
from trainer.unknown import UnknownRefresher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    seen = []
    real = dist.broadcast

    def recording(tensor, *args, **kwargs):
        seen.append(tensor.device)
        return real(tensor, *args, **kwargs)

    dist.broadcast = recording
    device = collectives.backend_device(torch.device("cpu"))
    shards = collectives.broadcast_object(["a", "b"] if rank == 0 else None, device)
    refresher = UnknownRefresher(torch.eye(4)[:2], num_unknown=2, explain_rule="margin",
                                 explain_threshold=0.5, seed=rank, comm_device=device)
    g = torch.Generator().manual_seed(rank)  # each rank sees other features: only rank 0's result counts
    refresher.observe(torch.randn(2, 4, 3, 3, generator=g))
    targets = refresher.refresh()
    results[rank] = (shards, (targets.centres, targets.explained), [str(d) for d in seen], str(device))
    dist.destroy_process_group()


def test_collectives_run_on_the_backend_device_and_every_rank_gets_rank_zeros_result():
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), results), nprocs=2, join=True)
    (shards0, targets0, seen0, device0), (shards1, targets1, seen1, _) = results[0], results[1]
    assert shards0 == shards1 == ["a", "b"]
    assert torch.equal(targets0[0], targets1[0]) and torch.equal(targets0[1], targets1[1]) and len(targets0[0]) >= 1
    assert device0 == "cpu" and set(seen0) == set(seen1) == {"cpu"} and len(seen1) >= 2


def _gather_rank(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    rows = torch.full((2 + rank, 3), float(rank))  # 2 segments on rank 0, 3 on rank 1
    results[rank] = collectives.gather_from_others(rows, collectives.backend_device(torch.device("cpu")))
    dist.destroy_process_group()


def test_each_rank_gets_every_other_ranks_segments_whatever_their_count():
    results = mp.Manager().dict()
    mp.spawn(_gather_rank, args=(_free_port(), results), nprocs=2, join=True)
    assert torch.equal(results[0], torch.ones(3, 3)) and torch.equal(results[1], torch.zeros(2, 3))
    assert collectives.gather_from_others(torch.ones(4, 3), torch.device("cpu")).shape == (0, 3)  # one rank


def test_nccl_keeps_collective_tensors_on_the_gpu(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    assert collectives.backend_device(torch.device("cuda", 3)) == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    assert collectives.backend_device(torch.device("cuda", 3)) == torch.device("cpu")


def test_the_memory_bank_serves_earlier_batches_newest_first_never_the_batch_itself():
    from trainer.step import Negatives

    bank = Negatives(all_ranks=True, bank_size=3)  # one process: no other rank to gather from
    a, b, c = (torch.full((2, 4), float(v)) for v in (1, 2, 3))
    assert bank(a).shape == (0, 4)
    assert torch.equal(bank(b), a)
    assert bank(c)[:, 0].tolist() == [2.0, 2.0, 1.0]  # b's two, then a's first: three kept
    assert Negatives(all_ranks=False, bank_size=0)(a).shape == (0, 4) and Negatives(False, 0).bank is None
