"""The loop every Ray Train worker runs: DeepSpeed engine, streaming batches, losses, checkpoints.

Read top to bottom: build, resume, then epochs of steps; a checkpoint carries the engine state
(sharded under ZeRO) and the data position, so a restart continues with the next batch.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from dataclasses import dataclass

import deepspeed
import ray
import ray.train
import torch

from common.storage import filesystem, join, write_json_atomic
from formats.model_file import save_model
from formats.prototypes import load_prototypes, semantic_targets
from formats.teacher_weights import load_teacher
from model.clip_teacher import TeacherConfig, auto_precision
from model.network import build_network
from trainer.collectives import backend_device
from trainer.config import LAYOUT, TrainConfig, data_layout, layout_mismatch
from trainer.data import StreamSpec, finish_batch, make_loader, shared_shard_list, steps_per_epoch
from trainer.metrics_log import MetricsLog
from trainer.step import (
    OnlineTeacher,
    build_optimizer,
    deepspeed_config,
    forward_losses,
    lr_factor,
    negatives_for,
    with_teacher_features,
)
from trainer.unknown import UnknownRefresher

CHECKPOINT_TAG = "engine"


class ResumeMismatch(RuntimeError):
    """A checkpoint cannot continue under the current world size or batch size."""


@dataclass(frozen=True)
class LoopInputs:
    """What every worker's loop receives (Ray Train passes it in `train_loop_config["inputs"]`)."""

    cfg: TrainConfig  # resolved by trainer.train.resolve: absolute paths, the teacher's width
    image_size: int  # the embed job's canvas side
    teacher: dict  # TeacherConfig fields of the teacher that made the features, for the model file
    last_block: str = "maskclip"  # how that teacher made dense features (the online teacher does the same)


def online_teacher(inputs: LoopInputs, device: torch.device) -> OnlineTeacher | None:
    """The embed job's teacher, frozen on this worker's device, when teacher.mode is online."""
    if inputs.cfg.teacher.mode != "online":
        return None
    precision = auto_precision(inputs.cfg.teacher.precision, device)  # as the embed job's actors decide
    teacher = load_teacher(TeacherConfig(inputs.teacher["model"], inputs.teacher["pretrained"], precision), device)
    return OnlineTeacher(teacher, inputs.last_block, precision)


def _save(engine, metrics: dict, client_state: dict) -> None:
    """Every rank writes its part (ZeRO shards) and reports it; Ray Train merges them into one checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
        engine.save_checkpoint(folder, tag=CHECKPOINT_TAG, client_state=client_state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_loop(config: dict) -> None:
    inputs: LoopInputs = config["inputs"]
    cfg = inputs.cfg
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    on_gpu = torch.cuda.is_available() and cfg.scaling.use_gpu
    device = torch.device("cuda", context.get_local_rank()) if on_gpu else torch.device("cpu")
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank

    comm_device = backend_device(device)
    shards = shared_shard_list(cfg.data.shards, cfg.data.clip, comm_device)
    steps = steps_per_epoch(shards, world, cfg.data.batch_size_per_worker)
    accumulation = cfg.optim.grad_accumulation_steps
    # whole optimizer steps only: a run never ends between accumulation boundaries
    optimizer_steps_total = cfg.max_steps or max(1, steps * cfg.epochs // accumulation)
    micro_steps_total = optimizer_steps_total * accumulation
    net = build_network(cfg.network)
    optimizer = build_optimizer(net, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, cfg.optim.warmup_steps, optimizer_steps_total, cfg.optim.min_lr_ratio))
    engine, _, _, _ = deepspeed.initialize(model=net, optimizer=optimizer, lr_scheduler=schedule,
                                           config=deepspeed_config(cfg))
    protos = load_prototypes(cfg.data.clip)
    targets = semantic_targets(protos).to(device)
    refresher = UnknownRefresher(protos["known"], cfg.refresh_num_unknown, protos["explain"]["rule"],
                                 protos["explain"]["threshold"], seed=cfg.run.seed,
                                 comm_device=comm_device) if cfg.refresh_unknown_every_steps else None

    micro_step = 0  # batches trained on, over all epochs; the data position is this batch of each stream
    layout = data_layout(cfg)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            _, client = engine.load_checkpoint(folder, tag=CHECKPOINT_TAG)
        mismatch = layout_mismatch(cfg, client)  # the driver checked LAYOUT already; this is the checkpoint's word
        if mismatch:
            raise ResumeMismatch(mismatch)
        micro_step = client["micro_step"]
    if rank == 0:
        fs, run_root = filesystem(join(cfg.run.storage_path, cfg.run.name))
        write_json_atomic(fs, join(run_root, LAYOUT), layout)

    spec = StreamSpec(cfg.data.shards, cfg.data.clip, shards, inputs.image_size, cfg.data.batch_size_per_worker,
                      cfg.data.shuffle_buffer, cfg.views, cfg.feature_size, cfg.run.seed, cfg.data.max_bad_samples,
                      cfg.data.views_on_device, online_teacher=cfg.teacher.mode == "online")
    teacher = online_teacher(inputs, device)
    os.makedirs(os.path.join(cfg.run.log_dir, cfg.run.name), exist_ok=True)
    log = MetricsLog(os.path.join(cfg.run.log_dir, cfg.run.name), optimizer_steps_total, enabled=rank == 0)
    images_per_micro_step = 2 * cfg.data.batch_size_per_worker * world  # two views per image
    keys_log = open(os.path.join(cfg.run.log_dir, cfg.run.name, f"keys-rank{rank}.jsonl"), "a") \
        if cfg.run.record_keys else None
    # a loader worker needs a shard of its own on every rank
    loader = make_loader(spec, rank, world, steps, micro_step, min(cfg.data.num_loader_workers, len(shards) // world))
    if cfg.data.in_memory_batches:
        loader = itertools.cycle(list(itertools.islice(loader, cfg.data.in_memory_batches)))
    waited = computed = 0.0
    since_log, tick = 0, time.perf_counter()
    negatives = negatives_for(cfg)
    for batch in loader:
        fetched = time.perf_counter()
        batch = with_teacher_features(finish_batch(batch, spec, device), teacher)
        if refresher:
            refresher.observe(batch["clip"])
        losses = forward_losses(engine, batch, targets, cfg, negatives)
        engine.backward(losses["total"])
        boundary = engine.is_gradient_accumulation_boundary()  # read before step(), which advances the count
        engine.step()
        micro_step += 1
        if keys_log:
            keys_log.write(json.dumps({"micro_step": micro_step, "epoch": batch["epoch"], "keys": batch["keys"],
                                       "node": ray.get_runtime_context().get_node_id()}) + "\n")
            keys_log.flush()
        done = time.perf_counter()
        waited, computed, tick, since_log = waited + fetched - tick, computed + done - fetched, done, since_log + 1
        last = micro_step >= micro_steps_total
        if boundary:
            step = micro_step // accumulation
            if step % cfg.run.log_every_steps == 0 or last:
                metrics = {**{f"loss/{k}": v.item() for k, v in losses.items()}, "lr": schedule.get_last_lr()[0],
                           "epoch": batch["epoch"], "images_per_s": images_per_micro_step * since_log
                           / max(waited + computed, 1e-9), "data_wait_fraction": waited / max(waited + computed, 1e-9),
                           "memory_gb": (torch.cuda.max_memory_allocated() if on_gpu else 0) / 1e9}
                log.log(step, metrics)
                waited = computed = 0.0
                since_log = 0
            if refresher and step % cfg.refresh_unknown_every_steps == 0:
                targets = refresher.refresh().to(device)
            if step % cfg.run.checkpoint_every_steps == 0 or last:
                _save(engine, {"step": step, "loss": losses["total"].item()}, {"micro_step": micro_step, **layout})
        if last:
            break
    log.close()
    if keys_log:
        keys_log.close()
    export(engine, cfg, inputs.teacher, inputs.last_block)


def master_state_dict(engine) -> dict[str, torch.Tensor]:
    """The module's state on the CPU with every parameter's fp32 master copy, not the bf16 weights the
    forward pass uses. DeepSpeed keeps that copy apart under ZeRO 1-3 and its bf16 optimizer and
    hands it out through its public safe_get_full_fp32_param (a collective under ZeRO-3: every rank
    calls this); otherwise the parameter is the master. Buffers (batch-norm statistics) as they are."""
    params = {}
    for name, param in engine.module.named_parameters():
        master = deepspeed.utils.safe_get_full_fp32_param(param)
        params[name] = (param if master is None else master).detach().float().cpu()
    buffers = {k: v.detach().cpu() for k, v in engine.module.state_dict().items() if k not in params}
    return {**buffers, **params}


def export(engine, cfg: TrainConfig, teacher: dict, last_block: str) -> None:
    """Rank 0 writes the plain weights file inference reads (formats/model_file.py), with how the
    teacher's dense features were made (its baseline row uses the same)."""
    state = master_state_dict(engine)
    if ray.train.get_context().get_world_rank() == 0:
        net = build_network(cfg.network)
        net.load_state_dict(state)
        save_model(f"{cfg.run.storage_path.rstrip('/')}/{cfg.run.name}/model.pt", net, teacher,
                   prototypes=load_prototypes(cfg.data.clip), extra={"teacher_last_block": last_block})
