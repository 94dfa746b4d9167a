"""The shard job on real Ray, real tar files, a loopback S3 endpoint and a loopback HTTP server."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs

from bench.loopback_http import serve_folder
from common import progress
from common.logs import RAY_NOTICES
from demo.synth import write_corpus
from formats.manifest import read_manifest
from formats.shards import read_samples
from pipelines.shard import main as shard_main
from tests.bad_images import awkward_files

REPO = Path(__file__).resolve().parents[2]


def ledger(output: str, fs=None) -> list[dict]:
    import fsspec

    fs = fs or fsspec.filesystem("file")
    rows = []
    for path in sorted(p for p in fs.ls(output, detail=False) if p.endswith(".parquet")):
        rows += pq.read_table(io.BytesIO(fs.cat_file(path))).to_pylist()
    return rows


def tar_members(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(str(root), num_train=24, num_val=0, size=64)
    for name, data, _, _ in awkward_files():
        (root / "train" / name).write_bytes(data)
    return root / "train"


def test_local_folder_to_shards(ray_local, corpus, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # each input reaches the bar as it is written
    caplog.set_level(logging.DEBUG, logger="common.progress")
    out = tmp_path / "shards"
    assert shard_main(["--input", str(corpus), "--output", str(out), "--samples-per-shard", "10",
                       "--image-size", "32", "min_image_size=16"]) == 0
    rows = ledger(str(out))
    # the bar moved once per input, not once per shard (4 shards)
    assert f"inputs: {len(rows)} items reported by workers in {len(rows)} reports" in caplog.text
    expected = {name: status for name, _, status, _ in awkward_files()}
    assert len(rows) == 24 + len(expected)
    by_name = {Path(r["url"]).name: r for r in rows}
    for name, status in expected.items():
        assert by_name[name]["status"] == status, name
    assert [r["key"] for r in rows] == [f"{s:05d}{i}" for s in range(4) for i in range(10)][: len(rows)]
    manifest = read_manifest(str(out))
    ok = [r for r in rows if r["status"] == "success"]
    assert manifest["complete"] and manifest["num_samples"] == len(ok) == 24 + 10
    assert [s["name"] for s in manifest["shards"]] == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]
    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["num_inputs"] == 10 and sum(stats["failures"].values()) + stats["num_samples"] == 10


    # img2dataset's field names, read as its users' scripts and open_clip_train read them
    columns = {"url", "error_message", "key", "status", "width", "height", "original_width", "original_height",
               "exif", "sha256", "caption"}
    failed = {"download": 0, "resize": 0}
    for stats_file in sorted(out.glob("*_stats.json")):
        stats = json.loads(stats_file.read_text())  # img2dataset's keys
        assert stats["count"] == stats["successes"] + stats["failed_to_download"] + stats["failed_to_resize"]
        assert sum(stats["status_dict"].values()) == stats["count"] and stats["duration"] >= 0
        assert stats["status_dict"].get("success", 0) == stats["successes"]
        failed["download"] += stats["failed_to_download"]
        failed["resize"] += stats["failed_to_resize"]
        table = pq.read_table(out / stats_file.name.replace("_stats.json", ".parquet"))
        assert columns <= set(table.column_names)
    assert failed["resize"] >= 5  # the awkward files: truncated, corrupt, not an image, too small, too many pixels
    rows = ledger(str(out))
    assert all(r["error_message"] for r in rows if r["status"] != "success")
    turned = next(r for r in rows if r["url"].endswith("exif_rotated.jpg"))
    assert json.loads(turned["exif"])["Orientation"] == "6"
    sample = next(s for s in read_samples(str(out), "00000") if "json" in s)
    assert columns <= set(json.loads(sample["json"])) and json.loads(sample["json"])["status"] == "success"
    # open_clip_train sizes an epoch from sizes.json beside the shards
    from open_clip_train.data import get_dataset_size

    size, num_shards = get_dataset_size(f"{out}/{{00000..{manifest['num_shards'] - 1:05d}}}.tar")
    assert (size, num_shards) == (manifest["num_samples"], manifest["num_shards"])

    # webdataset reads the shards back with the caption of the original .txt beside each image
    import webdataset as wds

    tars = sorted(str(p) for p in out.glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("rgb"))
    assert len(samples) == len(ok)
    captioned = [s for s in samples if "txt" in s]
    assert len(captioned) == 24 and all(s["txt"].startswith("a photo of") for s in captioned)
    first = next(s for s in samples if s["__key__"] == "000000")
    assert first["jpg"].shape == (32, 32, 3) and first["json"]["original_width"] == 64
    assert first["json"]["url"].endswith("000000.jpg")

    # ... and so does Ray Data
    records = ray_local.data.read_webdataset(str(out), file_extensions=["tar"]).take_all()
    assert sorted(r["__key__"] for r in records) == sorted(s["__key__"] for s in samples)

    # a second run changes nothing and says every shard was already complete
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    assert shard_main(["--input", str(corpus), "--output", str(out), "--samples-per-shard", "10",
                       "--image-size", "32", "min_image_size=16"]) == 0
    assert before == {p.name: p.read_bytes() for p in out.glob("*.tar")}


def test_a_rerun_trusts_the_manifest_and_lists_only_what_it_lacks(ray_local, corpus, tmp_path, capsys):
    out = tmp_path / "shards"
    args = ["--input", str(corpus), "--output", str(out), "--samples-per-shard", "10", "--image-size", "32"]
    assert shard_main(args) == 0
    capsys.readouterr()
    for name in ("00001.tar", "00001_stats.json"):  # taken out by hand, behind the manifest's back
        (out / name).unlink()
    assert shard_main(args) == 0
    assert "0 written, 4 already complete" in capsys.readouterr().out  # the manifest lists it: no look
    (out / "manifest.json").unlink()
    assert shard_main(args) == 0  # with no record, the markers decide
    assert "1 written, 3 already complete" in capsys.readouterr().out
    assert (out / "00001.tar").exists() and read_manifest(str(out))["complete"]


def test_resume_refuses_a_different_plan(ray_local, corpus, tmp_path, capsys):
    out = str(tmp_path / "shards")
    assert shard_main(["--input", str(corpus), "--output", out, "--samples-per-shard", "20"]) == 0
    capsys.readouterr()
    assert shard_main(["--input", str(corpus), "--output", out, "--samples-per-shard", "10"]) == 2
    assert "samples_per_shard=20" in capsys.readouterr().err


def test_s3_input_and_output(ray_local, corpus, s3_bucket, s3_endpoint):
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    for p in sorted(corpus.iterdir())[:24]:  # 12 images and their captions
        fs.pipe_file(f"{s3_bucket}/raw/{p.name}", p.read_bytes())
    fs.invalidate_cache()
    out = f"{s3_bucket}/shards"
    assert shard_main(["--input", f"{s3_bucket}/raw", "--output", out, "--samples-per-shard", "4",
                       "--image-size", "32"]) == 0
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls(out))
    assert "00000.tar" in names and "00000_stats.json" in names and "manifest.json" in names
    manifest = json.loads(fs.cat_file(f"{out}/manifest.json"))
    rows = ledger(out, fs)
    assert len(rows) == 12 and all(r["url"].startswith("s3://") for r in rows)
    assert manifest["num_samples"] == sum(r["status"] == "success" for r in rows)
    members = tar_members(fs.cat_file(f"{out}/00000.tar"))
    assert any(m.endswith(".txt") for m in members) and any(m.endswith(".jpg") for m in members)
    ds = ray_local.data.read_webdataset(f"{out}/", filesystem=_arrow_fs(fs), file_extensions=["tar"])
    assert ds.count() == manifest["num_samples"]


def _arrow_fs(fs):
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(fs))


def test_url_list_with_404s_and_a_slow_server(ray_local, corpus, tmp_path):
    images = sorted(p.name for p in corpus.iterdir() if p.name.endswith(".jpg") and p.name[0] == "0")[:6]
    with serve_folder(str(corpus), slow_s=3.0) as base:
        urls = [f"{base}/{n}" for n in images] + [f"{base}/missing.jpg", f"{base}/slow/{images[0]}"]
        url_list = tmp_path / "urls.csv"
        url_list.write_text("url,caption\n" + "".join(f"{u},caption {i}\n" for i, u in enumerate(urls)))
        out = tmp_path / "shards"
        assert shard_main(["--input", str(url_list), "--output", str(out), "--timeout-s", "0.5",
                           "--retries", "1", "--image-size", "32"]) == 0
    rows = ledger(str(out))
    assert [r["status"] for r in rows] == ["success"] * 6 + ["http_404", "timeout"]
    assert rows[2]["caption"] == "caption 2"
    members = tar_members((out / "00000.tar").read_bytes())
    assert "000000002.txt" in members and len([m for m in members if m.endswith(".jpg")]) == 6


def test_many_url_lists_in_a_folder(ray_local, corpus, tmp_path):
    """A folder of URL lists in several formats is one input: every row once, in list order, each
    shard task reading its own rows."""
    import pyarrow as pa

    images = sorted(p.name for p in corpus.iterdir() if p.name.endswith(".jpg") and p.name[0] == "0")[:9]
    lists = tmp_path / "lists"
    lists.mkdir()
    with serve_folder(str(corpus)) as base:
        urls = [f"{base}/{n}" for n in images]
        # each list also carries a score img2dataset users keep with --save-additional-columns
        pq.write_table(pa.table({"url": urls[:4], "caption": [f"c{i}" for i in range(4)],
                                 "score": [0.5 * i for i in range(4)]}), lists / "a.parquet")
        (lists / "b.csv").write_text("url,caption,score\n" + "".join(f"{u},c{i + 4},{0.5 * (i + 4)}\n"
                                                                     for i, u in enumerate(urls[4:7])))
        (lists / "c.jsonl").write_text("".join(json.dumps({"url": u, "caption": f"c{i + 7}", "score": 0.5 * (i + 7)})
                                               + "\n" for i, u in enumerate(urls[7:])))
        out = tmp_path / "shards"
        assert shard_main(["--input", str(lists), "--output", str(out), "--samples-per-shard", "4",
                           "--image-size", "32", "--save-additional-columns", "score"]) == 0
    rows = ledger(str(out))
    assert [r["url"] for r in rows] == urls and [r["caption"] for r in rows] == [f"c{i}" for i in range(9)]
    assert all(r["status"] == "success" for r in rows)
    assert [float(r["score"]) for r in rows] == [0.5 * i for i in range(9)]  # the ledger: as text
    samples = [s for n in ("00000", "00001", "00002") for s in read_samples(str(out), n)]
    assert sorted(json.loads(s["json"])["score"] for s in samples) == [0.5 * i for i in range(9)]
    assert read_manifest(str(out))["num_samples"] == 9


def test_a_retry_pass_fetches_transient_failures_once_into_new_shards(ray_local, corpus, tmp_path):
    images = sorted(p.name for p in corpus.iterdir() if p.name.endswith(".jpg") and p.name[0] == "0")[:5]
    with serve_folder(str(corpus)) as base:
        # a 404 is not transient; the flaky ones answer 503 once, then the image
        urls = [f"{base}/{images[0]}", f"{base}/flaky/{images[1]}", f"{base}/missing.jpg",
                f"{base}/flaky/{images[2]}", f"{base}/{images[3]}"]
        (tmp_path / "urls.txt").write_text("\n".join(urls))
        out = tmp_path / "shards"
        args = ["--input", str(tmp_path / "urls.txt"), "--output", str(out), "--samples-per-shard", "2",
                "--retries", "0", "--image-size", "32"]
        assert shard_main(args) == 0
        first = ledger(str(out))
        assert [r["status"] for r in first] == ["success", "http_503", "http_404", "http_503", "success"]
        assert shard_main(args + ["--retry-failed"]) == 0
        assert shard_main(args + ["--retry-failed"]) == 0  # nothing transient is left: no new shard
    rows = ledger(str(out))
    assert rows[:5] == first  # the first shards are as they were
    retried = sorted(rows[5:], key=lambda r: r["retry_of"])  # a pass's rows come in the order Ray Data read them
    assert [(r["url"], r["status"], r["retry_of"]) for r in retried] == [
        (urls[1], "success", first[1]["key"]), (urls[3], "success", first[3]["key"])]
    assert len({r["key"] for r in rows}) == 7  # new keys, in a new shard of its own
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]
    manifest = read_manifest(str(out))
    assert manifest["complete"] and manifest["num_shards"] == 4 and manifest["num_samples"] == 4


def test_dedup_keeps_one_copy_across_shards(ray_local, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    photo = awkward_files()[0][1]
    for i in range(6):
        (raw / f"{i}.jpg").write_bytes(photo if i % 2 == 0 else photo + bytes([i]))
    out = tmp_path / "shards"
    assert shard_main(["--input", str(raw), "--output", str(out), "--samples-per-shard", "2", "--dedup", "true",
                       "--dedup-actors", "3"]) == 0
    rows = ledger(str(out))
    kept = [r for r in rows if r["status"] == "success"]
    dupes = [r for r in rows if r["status"] == "duplicate"]
    # 0, 2 and 4 are the same bytes; 1, 3 and 5 each differ by one trailing byte
    assert len(kept) == 4 and len(dupes) == 2
    owner = {r["key"] for r in kept if r["sha256"] == dupes[0]["sha256"]}
    assert {d["duplicate_of"] for d in dupes} == owner


def test_a_dedup_failure_fails_the_shard_and_marks_no_image(ray_local, tmp_path):
    """The dedup actor dies: the shard is not committed with its images marked "error"; it fails whole
    (after its retries), leaves nothing behind, and a rerun writes every image."""
    import ray

    from pipelines.shard import ShardConfig
    from pipelines.sharding.dedup import DedupFailed, start_dedup
    from pipelines.sharding.plan import make_plan
    from pipelines.sharding.sources import SourceSpec
    from pipelines.sharding.worker import process_shard

    write_corpus(str(tmp_path), num_train=4, num_val=0, size=64)
    out = tmp_path / "shards"
    cfg = ShardConfig(input=str(tmp_path / "train"), output=str(out), samples_per_shard=4, shard_retries=1, dedup=True)
    plan = make_plan(SourceSpec(cfg.input, cfg.url_col, cfg.caption_col, cfg.extensions), cfg.output, 4,
                     cfg.output_settings())
    spec = cfg.worker_spec(plan.key_digits)
    claim = start_dedup(cfg.output, [], num_actors=1)
    ray.kill(claim.actors[0])
    with pytest.raises(DedupFailed):
        claim("sha", "key")
    result = process_shard("00000", plan.segments("00000"), spec, claim)
    assert result["status"] == "failed" and "DedupFailed" in result["error"]
    assert [p.name for p in out.iterdir()] == ["_plan"]  # no tar, ledger or marker
    again = process_shard("00000", plan.segments("00000"), spec, start_dedup(cfg.output, []))
    assert again["status"] == "written" and again["num_samples"] == 4


def settled_count(folder, pattern: str) -> int:
    """How many files match once none has appeared for two seconds."""
    count, since = len(list(folder.glob(pattern))), time.time()
    while time.time() - since < 2:
        time.sleep(0.1)
        now = len(list(folder.glob(pattern)))
        if now != count:
            count, since = now, time.time()
    return count


@pytest.mark.slow
def test_killed_job_resumes_with_every_input_exactly_once(tmp_path):
    raw = tmp_path / "raw"
    write_corpus(str(tmp_path), num_train=120, num_val=0, size=64)
    raw = tmp_path / "train"
    out = tmp_path / "shards"
    cmd = [sys.executable, str(REPO / "pipelines" / "shard.py"), "--input", str(raw), "--output", str(out),
           "--samples-per-shard", "5", "--num-cpus", "2", "--thread-count", "1"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*_stats.json"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = settled_count(out, "*_stats.json")  # a Ray worker outside the group may finish one more
    assert 3 <= committed < 24, "the kill should land mid-job"
    (out / "00023.tar").write_bytes(b"half a tar")  # a partial shard from the killed run
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{committed} already complete" in rerun.stdout
    rows = ledger(str(out))
    locations = [r["url"] for r in rows]
    assert len(locations) == len(set(locations)) == 120
    keys = []
    for tar in sorted(out.glob("*.tar")):
        keys += [m.split(".")[0] for m in tar_members(tar.read_bytes()) if m.endswith(".jpg")]
    assert len(keys) == len(set(keys)) == 120
    assert read_manifest(str(out))["complete"]
    # what the killed tasks were writing is gone: staging tars and temp files are per shard, redone
    assert [p.name for p in out.iterdir() if p.name.endswith(".partial") or ".tmp-" in p.name] == []


@pytest.mark.parametrize("decode_threads", [1, 3])
def test_decoding_threads_are_capped_while_many_fetch(corpus, tmp_path, monkeypatch, decode_threads):
    """16 threads fetch, at most `decode_threads` of them decode at once: in-process, no Ray."""
    import threading

    from formats.images import INPUT_EXTENSIONS, ResizeSpec
    from pipelines.sharding import worker as shard_worker
    from pipelines.sharding.plan import make_plan
    from pipelines.sharding.sources import SourceSpec

    out = str(tmp_path / "shards")
    plan = make_plan(SourceSpec(str(corpus), "url", "caption", INPUT_EXTENSIONS), out, 100)
    lock, running, peak = threading.Lock(), [0], [0]
    real = shard_worker.process_image

    def tracked(data, spec):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)  # long enough that unbounded threads would overlap
        try:
            return real(data, spec)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(shard_worker, "process_image", tracked)
    spec = shard_worker.WorkerSpec(out, ResizeSpec(32), plan.key_digits, thread_count=16, decode_threads=decode_threads)
    stats = shard_worker.process_shard(plan.names()[0], plan.segments(plan.names()[0]), spec)
    assert stats["status"] == "written" and stats["num_samples"] >= 24  # the scenes and the awkward files that are fine
    assert peak[0] == decode_threads


def test_a_rerun_with_other_output_settings_is_refused_before_ray_starts(corpus, tmp_path):
    out = str(tmp_path / "shards")
    first = subprocess.run([sys.executable, "pipelines/shard.py", "--input", str(corpus), "--output", out,
                            "--samples-per-shard", "100", "--image-size", "32", "--num-cpus", "1"],
                           cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    # what a user reads: the job's lines and bar, none of Ray's per-start notices (common/logs.py)
    assert not [n for n in RAY_NOTICES if n in first.stderr + first.stdout], first.stderr
    assert "samples in dataset:" in first.stdout
    rerun = subprocess.run([sys.executable, "pipelines/shard.py", "--input", str(corpus), "--output", out,
                            "--samples-per-shard", "100", "--image-size", "64", "--num-cpus", "1"],
                           cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 2
    assert rerun.stderr.strip().splitlines()[-1] == (f"error: {out} holds shards made with image_size=32, not 64; "
                                                     "use another output folder, or the same values to resume")
    assert "Ray" not in rerun.stderr


def test_plan_only_writes_and_summarises_the_plan_and_fetches_nothing(corpus, tmp_path):
    out = tmp_path / "shards"
    done = subprocess.run([sys.executable, "pipelines/shard.py", "--input", str(corpus), "--output", str(out),
                           "--samples-per-shard", "4", "--plan-only"],
                          cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    total = json.loads((out / "_plan" / "plan.json").read_text())["num_inputs"]
    assert total > 24  # the scenes and the awkward files
    assert f"plan: {total} inputs from {corpus} in {-(-total // 4)} shards of 4" in done.stdout
    assert "nothing fetched" in done.stdout and "Ray" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["_plan"]  # no tar, ledger or marker


def test_the_shard_job_never_imports_torch():
    # Every shard task's worker process imports what the driver does; torch (through webdataset's package,
    # which only reading needs) made each one 1-2 s late to its first image and needs to be on no data node.
    code = "import sys, pipelines.shard, pipelines.sharding.worker; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
