"""How long the shard job takes to recognise a finished dataset of many shards, and how many object-store
calls it makes, on local disk and on the loopback S3 (moto):

    python -m bench.bench_resume --num-shards 100000

The output is laid out as a run that wrote every shard leaves it (the plan, and per shard a tar,
a ledger and a stats marker, the first two empty: only names are read), plus the manifest. Then
`pipelines/shard.py`'s `run()` is timed on it, Ray already started, twice: as the finished run left it
(the plan read, the manifest, the new manifest, with nothing left to write), and as a run killed a
minute after its last manifest leaves it: the manifest lacks the last 1% of the shards, whose markers
are found by listing their name prefixes and whose counts are read from them. The S3 objects are put into moto's
in-memory backend directly (the put is setup, not measured); the job's own requests go through
HTTP and are counted by moto's recorder.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time

import requests

from common.ray_utils import init_ray
from formats.manifest import write_manifest
from formats.shards import STATS_SUFFIX, ledger_name, shard_name, tar_name
from pipelines import shard
from pipelines.sharding.lists import ListFile
from pipelines.sharding.plan import Plan, save_plan

SAMPLES = 10_000  # per shard: 100k shards = 1B images


def write_layout(root: str, num_shards: int, settings: dict) -> None:
    """A finished output under local folder `root`, by the job's own writers where names matter."""
    listed = (ListFile("bench://input/urls.parquet", "parquet", num_shards * SAMPLES),)
    plan = Plan("bench://input", SAMPLES, num_shards * SAMPLES, num_shards, 5, 4, settings, files=listed)
    save_plan(root, plan)
    for name in plan.names():
        for empty in (tar_name(name), ledger_name(name)):
            open(os.path.join(root, empty), "wb").close()
        with open(os.path.join(root, name + STATS_SUFFIX), "w") as fh:
            json.dump({"shard": name, "num_samples": SAMPLES}, fh)
    write_manifest(root, num_shards, {name: SAMPLES for name in plan.names()})


def lag_manifest(output: str, num_shards: int) -> None:
    """The manifest as a run killed a minute after writing it left it: without the last 1% of the shards."""
    names = [shard_name(i, 5) for i in range(num_shards - num_shards // 100)]
    write_manifest(output, num_shards, {name: SAMPLES for name in names})


def timed_run(output: str) -> tuple[float, dict]:
    cfg = shard.ShardConfig(input="bench://input", output=output, samples_per_shard=SAMPLES, num_cpus=1)
    started = time.perf_counter()
    manifest = shard.run(cfg)
    return time.perf_counter() - started, manifest




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-shards", type=int, default=100_000)
    args = parser.parse_args(argv)
    settings = shard.ShardConfig(input="-", output="-").output_settings()
    init_ray(1)  # Ray's own start (~3 s here) is not part of recognising what is done
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_layout(tmp, args.num_shards, settings)
        files = {os.path.relpath(os.path.join(d, f), tmp): open(os.path.join(d, f), "rb").read()
                 for d, _, names in os.walk(tmp) for f in names}
        for record in ("finished", "killed"):
            seconds, manifest = timed_run(tmp)
            assert manifest["complete"] and manifest["num_shards"] == args.num_shards
            rows.append(("local disk", record, seconds, "-"))
            lag_manifest(tmp, args.num_shards)

    from moto.backends import get_backend
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        backend = get_backend("s3")["123456789012"]["aws"]
        backend.create_bucket("bench", "us-east-1")
        for path, body in files.items():
            backend.put_object("bench", f"out/{path}", body)
        recorder = f"{endpoint}/moto-api/recorder"
        for record in ("finished", "killed"):
            requests.post(f"{recorder}/reset-recording", timeout=10)
            requests.post(f"{recorder}/start-recording", timeout=10)
            seconds, manifest = timed_run("s3://bench/out")
            requests.post(f"{recorder}/stop-recording", timeout=10)
            recording = requests.get(f"{recorder}/download-recording", timeout=10).text.splitlines()
            calls = sum("/bench" in line for line in recording)
            assert manifest["complete"] and manifest["num_shards"] == args.num_shards
            rows.append(("loopback S3 (moto)", record, seconds, str(calls)))
            lag_manifest("s3://bench/out", args.num_shards)
    finally:
        server.stop()
    print(f"| {args.num_shards:,} finished shards on | found from | run() to the new manifest (s) | object-store calls |")
    print("|---|---|---|---|")
    for where, record, seconds, calls in rows:
        print(f"| {where} | {'the manifest' if record == 'finished' else 'a manifest 1% behind, the rest listed'} | {seconds:.1f} | {calls} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
