"""Start-up: DeepSpeed's CPU comm op is built before any training, not in the first one; at scale, reading
the shard list costs the same object-store calls for one rank or three (rank 0 reads, the others receive
it), counted by the loopback S3 server itself."""

import os
import socket
import sys

import pytest
import requests
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer.data import shared_shard_list
from trainer.ops import prebuild


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, shards_url, clip_url, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results[rank] = [(s.name, s.sidecar_parts, s.num_samples)
                     for s in shared_shard_list(shards_url, clip_url, torch.device("cpu"))]
    dist.destroy_process_group()


def object_store_calls(endpoint: str, bucket: str, run) -> int:
    """Requests to `bucket` that the S3 server saw while `run()` ran, from any process."""
    recorder = f"{endpoint}/moto-api/recorder"
    requests.post(f"{recorder}/reset-recording", timeout=10)
    requests.post(f"{recorder}/start-recording", timeout=10)
    try:
        run()
    finally:
        requests.post(f"{recorder}/stop-recording", timeout=10)
    lines = requests.get(f"{recorder}/download-recording", timeout=10).text.splitlines()
    return sum(f"/{bucket.removeprefix('s3://')}" in line for line in lines)


def test_the_shard_list_costs_the_same_calls_for_any_number_of_ranks(prepared, s3_bucket, s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem()
    for folder in ("shards", "clip"):
        fs.put(str(prepared / folder) + "/", f"{s3_bucket}/{folder}/", recursive=True)
    shards_url, clip_url = f"{s3_bucket}/shards", f"{s3_bucket}/clip"
    calls, lists = {}, {}
    for world in (1, 3):
        results = mp.Manager().dict()
        calls[world] = object_store_calls(s3_endpoint, s3_bucket, lambda: mp.spawn(
            _rank, args=(world, _free_port(), shards_url, clip_url, results), nprocs=world, join=True))
        lists[world] = [results[r] for r in range(world)]
    print(f"object-store calls for the shard list, by number of ranks: {calls}")
    assert calls[1] == calls[3] > 0, calls
    assert len(lists[1][0]) == 6 and all(every == lists[1][0] for every in lists[3])


@pytest.mark.skipif(sys.platform != "linux", reason="DeepSpeed's shared-memory op is built on Linux only")
def test_prebuilt_op_is_the_one_deepspeeds_backend_loads_without_a_build():
    """`make env` builds the CPU comm op (trainer/ops.py); DeepSpeed's own backend must then find that very
    library and not compile it again in the first training (a minute of the demo's two cores)."""
    from deepspeed.comm.torch import build_shm_op

    built = prebuild()
    assert list(built) == ["deepspeed.ops.comm.deepspeed_shm_comm_op"]
    library = built["deepspeed.ops.comm.deepspeed_shm_comm_op"]
    before = os.stat(library).st_mtime_ns
    assert build_shm_op().__file__ == library
    assert os.stat(library).st_mtime_ns == before
