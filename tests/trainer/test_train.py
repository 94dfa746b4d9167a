"""Ray Train + DeepSpeed on CPU: two workers train for real (ZeRO 0 and 2, local and S3), a killed worker
resumes from its checkpoint with the same data and loss curve, and bad configs stop before any worker."""

import json
import os
import signal
import threading
import time

import pytest
import torch

from common.config import build_config
from formats.model_file import load_model
from trainer import train
from trainer.config import TrainConfig


def config(root, name, **over):
    values = {
        "data": {"shards": str(root / "shards"), "clip": str(root / "clip"), "batch_size_per_worker": 4,
                 "num_loader_workers": 1, "shuffle_buffer": 16},
        "max_steps": 12,
        "network": {"backbone": "small", "output_stride": 4, "embedding_dim": 16},
        "views": {"crop_size": 32},
        "loss": {"segmenter": {"grid": [2, 2], "num_iters": 5}},
        "optim": {"lr": 0.05, "warmup_steps": 2},
        "scaling": {"num_workers": 2},
        "run": {"name": name, "storage_path": str(root / "runs"), "log_dir": str(root / "logs"),
                "checkpoint_every_steps": 4, "log_every_steps": 1, "max_failures": 2},
    }
    for key, value in over.items():
        section, _, leaf = key.rpartition(".")
        (values.setdefault(section, {}) if section else values)[leaf] = value
    return build_config(TrainConfig, values)


def metrics(root, name):
    return [json.loads(line) for line in open(root / "logs" / name / "metrics.jsonl")]


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_two_workers_train_and_export(prepared, zero_stage):
    name = f"zero{zero_stage}"
    # ZeRO 0 also takes every rank's segments and a bank of earlier ones as negatives (gathered on gloo, as
    # on NCCL); ZeRO 2 refreshes the unknown prototypes (rank 0 finds them, every rank receives them) and
    # zooms out (views up to 4 times the canvas, padded, the padding in no loss); ZeRO 3, where parameters
    # are sharded, runs bf16 autocast and gathers the fp32 master to export
    extra = {0: {"loss.negatives": "all_ranks", "loss.memory_bank": 64},
             2: {"refresh_unknown_every_steps": 4, "views.zoom_out": True, "views.scale": (0.25, 1.0)},
             3: {"scaling.bf16": True}}.get(zero_stage, {})
    result = train.run(config(prepared, name, **{"scaling.zero_stage": zero_stage}, **extra))
    assert result.error is None and result.checkpoint is not None
    losses = [m["loss/total"] for m in metrics(prepared, name)]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses
    net, meta = load_model(str(prepared / "runs" / name / "model.pt"))
    assert net.cfg.clip_dim == 64 and meta["teacher"]["model"] == "tiny-rn"
    assert meta["extra"]["teacher_last_block"] == "maskclip"  # the teacher baseline's dense features
    assert meta["prototypes"]["known"].shape == (5, 64)
    if zero_stage == 3:
        weights = [p.detach() for p in net.parameters()]
        assert all(w.dtype == torch.float32 for w in weights)
        assert any(not torch.equal(w.bfloat16().float(), w) for w in weights)  # not bf16-rounded


def test_online_teacher_trains_on_two_workers_from_superpixel_only_sidecars(prepared):
    """teacher.mode=online: the sidecars hold superpixels only (embed --storage none) and each worker runs
    the embed job's teacher on its views, in bf16, on the device-side views path."""
    from common.config import ConfigError
    from pipelines import embed

    bare = str(prepared / "clip-bare")
    assert embed.run(embed.EmbedConfig(input=str(prepared / "shards"), output=bare, clip_model="tiny-rn",
                                       classes=str(prepared / "classes.txt"), num_unknown=4, storage="none"))["complete"]
    with pytest.raises(ConfigError, match="teacher.mode=online"):  # before any worker starts
        train.run(config(prepared, "bare", **{"data.clip": bare}))
    result = train.run(config(prepared, "online", max_steps=8, refresh_unknown_every_steps=4, **{
        "data.clip": bare, "teacher.mode": "online", "teacher.precision": "bf16", "data.views_on_device": True}))
    assert result.error is None
    logged = metrics(prepared, "online")
    assert [m["step"] for m in logged] == list(range(1, 9))
    assert all(m["loss/embedding"] > 0 and m["loss/semantic"] > 0 for m in logged)
    assert sum(m["loss/total"] for m in logged[-3:]) < sum(m["loss/total"] for m in logged[:3]), logged
    net, meta = load_model(str(prepared / "runs" / "online" / "model.pt"))
    assert net.cfg.clip_dim == 64 and meta["teacher"]["model"] == "tiny-rn"
    assert meta["extra"]["teacher_last_block"] == "maskclip"  # the teacher baseline's dense features


def test_bad_configs_stop_before_any_worker(prepared, capsys):
    base = ["--config", "trainer/configs/tiny.yaml"]
    assert train.main(base + ["scaling.zero_stage=5"]) == 2
    assert "zero_stage" in capsys.readouterr().err
    assert train.main(base + ["optim.nme=adamw"]) == 2
    assert "unknown config key optim.nme" in capsys.readouterr().err
    assert train.main(base + ["views.crop_size=30"]) == 2
    assert "multiple of" in capsys.readouterr().err


def test_training_from_s3_with_checkpoints_on_s3(prepared, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    for folder in ("shards", "clip"):
        fs.put(str(prepared / folder) + "/", f"{s3_bucket}/{folder}/", recursive=True)
    cfg = config(prepared, "s3", max_steps=4, **{"data.shards": f"{s3_bucket}/shards", "data.clip": f"{s3_bucket}/clip",
                                                  "run.storage_path": f"{s3_bucket}/runs"})
    result = train.run(cfg)
    assert result.error is None
    fs.invalidate_cache()
    assert any("checkpoint" in p for p in fs.ls(f"{s3_bucket}/runs/s3"))
    net, _ = load_model(f"{s3_bucket}/runs/s3/model.pt")
    assert net.cfg.backbone == "small"


def kill_a_worker_after_first_checkpoint(root, name, killed):
    """SIGKILL one training worker process once the run has a checkpoint (a node or process dying mid-run)."""
    import psutil

    run_dir = root / "runs" / name
    deadline = time.time() + 300
    while time.time() < deadline and not killed:
        if run_dir.exists() and any(p.startswith("checkpoint") for p in os.listdir(run_dir)):
            for proc in psutil.process_iter(["cmdline"]):
                if any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    return
        time.sleep(0.1)


@pytest.mark.slow
def test_a_killed_worker_resumes_with_the_same_data_and_loss_curve(prepared):
    reference = config(prepared, "straight", **{"run.record_keys": True, "data.num_loader_workers": 0})
    assert train.run(reference).error is None
    resumed = config(prepared, "killed", **{"run.record_keys": True, "data.num_loader_workers": 0})
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_worker_after_first_checkpoint, args=(prepared, "killed", killed))
    killer.start()
    result = train.run(resumed)
    killer.join()
    assert killed, "no worker was killed"
    assert result.error is None

    def last_record_per_step(name, rank):
        records = {}
        for line in open(prepared / "logs" / name / f"keys-rank{rank}.jsonl"):
            record = json.loads(line)
            records[record["micro_step"]] = record["keys"]
        return records

    for rank in (0, 1):
        straight, again = last_record_per_step("straight", rank), last_record_per_step("killed", rank)
        assert sorted(again) == sorted(straight) == list(range(1, 13))
        assert again == straight  # every batch after the restart is the one the uninterrupted run saw
    curve = {m["step"]: m["loss/total"] for m in metrics(prepared, "straight")}
    after = {m["step"]: m["loss/total"] for m in metrics(prepared, "killed")}
    for step, loss in curve.items():
        assert after[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), step


def test_bf16_autocast_on_two_workers_tracks_fp32_and_exports_fp32_weights(prepared):
    """The GPU recipe's precision path (scaling.bf16: the network under bf16 autocast, fp32 weights,
    losses and k-means) run on CPU. Tolerance: each of the first six losses within 5% of fp32's."""
    import torch

    curves = {}
    for bf16 in (False, True):
        name = f"precision-{'bf16' if bf16 else 'fp32'}"
        assert train.run(config(prepared, name, max_steps=6, **{"scaling.bf16": bf16})).error is None
        curves[bf16] = [m["loss/total"] for m in metrics(prepared, name)]
    assert len(curves[True]) == len(curves[False]) == 6
    assert curves[True] != curves[False]  # autocast did change the arithmetic
    for low, full in zip(curves[True], curves[False]):
        assert low == pytest.approx(full, rel=0.05)
    net, _ = load_model(str(prepared / "runs" / "precision-bf16" / "model.pt"))
    weights = [p.detach() for p in net.parameters()]
    assert all(w.dtype == torch.float32 for w in weights)
    # the fp32 master copy, not bf16-rounded values
    assert any(not torch.equal(w.bfloat16().float(), w) for w in weights)


def test_accumulation_steps_and_checkpoints_match_a_batch_that_many_times_larger(prepared):
    """Accumulating 4 micro-batches of 1 counts optimizer steps, logs, the LR schedule and checkpoints
    exactly as batches of 4 do (they used to land one micro-batch early)."""
    runs = {"batch4": {"data.batch_size_per_worker": 4},
            "accum4x1": {"data.batch_size_per_worker": 1, "optim.grad_accumulation_steps": 4}}
    seen = {}
    for name, over in runs.items():
        result = train.run(config(prepared, name, max_steps=5, **{"run.checkpoint_every_steps": 2, **over}))
        assert result.error is None
        logged = metrics(prepared, name)
        kept = sorted(metrics_["step"] for _, metrics_ in result.best_checkpoints)
        seen[name] = ([m["step"] for m in logged], [round(m["lr"], 8) for m in logged], kept)
    assert seen["batch4"] == seen["accum4x1"]
    assert seen["batch4"][0] == [1, 2, 3, 4, 5] and seen["batch4"][2] == [4, 5]  # every 2 steps and the last, 2 kept


def test_resuming_under_another_world_size_is_refused_in_one_line(prepared, capsys):
    assert train.run(config(prepared, "layout", max_steps=2, **{"run.checkpoint_every_steps": 2})).error is None
    argv = ["--config", "trainer/configs/tiny.yaml", f"data.shards={prepared / 'shards'}",
            f"data.clip={prepared / 'clip'}", "run.name=layout", f"run.storage_path={prepared / 'runs'}",
            f"run.log_dir={prepared / 'logs'}", "data.batch_size_per_worker=4"]
    started = time.time()
    assert train.main(argv + ["scaling.num_workers=1"]) == 2  # a user's mistake, before any worker starts
    assert time.time() - started < 10
    err = capsys.readouterr().err.strip()
    assert err == ("error: run layout was checkpointed with 2 workers x 4 images; resuming with 1 x 4 would "
                   "repeat or skip data: use those settings or a new run.name")
    assert train.main(argv + ["data.batch_size_per_worker=2"]) == 2
