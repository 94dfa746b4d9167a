"""Train the CLIP-S4 model with Ray Train + DeepSpeed, on one laptop or many GPU nodes.

    python -m trainer.train --config trainer/configs/tiny.yaml data.shards=data/shards data.clip=data/clip
    ray job submit --working-dir . -- python -m trainer.train --config trainer/configs/gpu.yaml

The config is checked before any worker starts. A run with the same run.name and
run.storage_path continues from its last checkpoint; failed workers are restarted from it
(run.max_failures). The exported weights land in STORAGE/NAME/model.pt.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

# Run as a file (`python trainer/train.py`, as under `ray job submit`): this checkout's packages,
# not an installed copy of them.
if not __package__:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import logs  # before anything imports ray: it reads its log settings then

logs.drop_ray_worker_noise()

if TYPE_CHECKING:
    import ray.train

from common.config import ConfigError, job_config
from common.ray_utils import init_ray
from common.storage import arrow_filesystem, filesystem, join, read_json
from formats.manifest import check_dataset
from formats.sidecar import read_embed_manifest
from trainer.config import LAYOUT, TrainConfig, layout_mismatch


class TrainingFailed(RuntimeError):
    """Ray Train gave up on the run: its workers' tracebacks are above, in their logs."""


def _absolute(url: str) -> str:
    """Workers do not share the driver's working directory: local paths are made absolute here."""
    return url if "://" in url else os.path.abspath(url)


def resolve(cfg: TrainConfig, embedded: dict) -> TrainConfig:
    """The config the workers run, a new object: local paths made absolute, and the projection head
    in the width of the CLIP features (`network.clip_dim` 0), or a ConfigError when the user's differs."""
    width = embedded["embed_dim"]
    if embedded["storage"] == "none" and cfg.teacher.mode != "online":
        raise ConfigError(f"the sidecars in {cfg.data.clip} hold superpixels only (embed --storage none): "
                          "set teacher.mode=online to run the teacher in the training step")
    if cfg.network.clip_dim not in (0, width):
        raise ConfigError(f"network.clip_dim={cfg.network.clip_dim}, but the CLIP features in {cfg.data.clip} are "
                          f"{width}-d: leave it 0 (the features' width) or set {width}")
    return replace(cfg, data=replace(cfg.data, shards=_absolute(cfg.data.shards), clip=_absolute(cfg.data.clip)),
                   run=replace(cfg.run, storage_path=_absolute(cfg.run.storage_path), log_dir=_absolute(cfg.run.log_dir)),
                   network=replace(cfg.network, clip_dim=width))


def portable_weights(pretrained: str) -> str:
    """The embed job's `pretrained` as workers (another working directory) and the model file can use
    it: a local file made absolute; a tag, a URL or "" (random) as they are."""
    return os.path.abspath(pretrained) if pretrained and os.path.isfile(pretrained) else pretrained


def check_resumable(cfg: TrainConfig) -> None:
    """A run name that already holds checkpoints resumes only with the data layout it was cut for."""
    fs, run_root = filesystem(join(cfg.run.storage_path, cfg.run.name))
    path = join(run_root, LAYOUT)
    if fs.exists(path):
        mismatch = layout_mismatch(cfg, read_json(fs, path))
        if mismatch:
            raise ConfigError(mismatch)


def run(cfg: TrainConfig) -> ray.train.Result:
    """Train, after checking the user's inputs: Ray Train, DeepSpeed and the loop are imported only
    then (4-9 s on a 2-core box), so a mistake is one line within seconds."""
    check_resumable(cfg)
    check_dataset(cfg.data.shards)  # here, as one line, not as every worker's traceback once Ray is up
    embedded = read_embed_manifest(cfg.data.clip)
    if embedded["random_init"]:
        logging.warning("the CLIP features in %s come from a RANDOMLY INITIALISED teacher", cfg.data.clip)
    cfg = resolve(cfg, embedded)
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainer.loop import LoopInputs, train_loop

    init_ray()
    path, filesystem_ = arrow_filesystem(cfg.run.storage_path)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"inputs": LoopInputs(cfg, embedded["image_size"], {
            "model": embedded["clip_model"], "pretrained": portable_weights(embedded["pretrained"])},
            embedded["last_block"])},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
            placement_strategy=cfg.scaling.placement_strategy,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.resources_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.run.name, storage_path=path, storage_filesystem=filesystem_,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.num_checkpoints_kept),
            logging_config=ray.train.LoggingConfig(log_level=logs.ray_train_level())),
    )
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise TrainingFailed(str(e).strip().splitlines()[0]) from e


def main(argv: list[str] | None = None) -> int:
    cfg = job_config(TrainConfig, argv, __doc__)
    if cfg is None:
        return 2
    try:
        result = run(cfg)
    except ConfigError as e:  # the settings disagree with the CLIP features or the run's checkpoints
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingFailed as e:
        print(f"error: training failed: {e}", file=sys.stderr)
        return 1
    if result.error:
        print(f"error: training failed: {str(result.error).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"trained: last checkpoint {result.checkpoint.path if result.checkpoint else None}; "
          f"model file {cfg.run.storage_path.rstrip('/')}/{cfg.run.name}/model.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
