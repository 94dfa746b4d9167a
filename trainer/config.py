"""The trainer's typed configuration: one dataclass tree, read from YAML plus `key=value` overrides and
validated before any worker starts."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import ConfigError
from model.network import NetworkConfig
from model.objective import LossConfig
from model.views import ViewConfig


@dataclass(frozen=True)
class DataConfig:
    shards: str = field(metadata={"help": "image shards (pipelines/shard.py output), local or s3://"})
    clip: str = field(metadata={"help": "sidecars of those shards (pipelines/embed.py output)"})
    batch_size_per_worker: int = 16  # images; each gives two views
    num_loader_workers: int = 2  # loader processes per training worker
    shuffle_buffer: int = 256  # samples shuffled together: each block of this many consecutive samples
    max_bad_samples: int = 1000  # a loader worker gives up (the run fails loudly) past this many
    in_memory_batches: int = 0  # >0: load this many batches once and cycle them (benchmarks: no data cost)
    # Cut the two views (crop, flip, colour jitter, blur) where the step runs: the loader ships uint8
    # canvases, int32 superpixels and fp16 features, a quarter of the bytes, and a GPU does the
    # resampling. False cuts them in the loader workers: on a CPU run they have cores of their own.
    views_on_device: bool = True

    def __post_init__(self):
        if self.batch_size_per_worker < 1 or self.num_loader_workers < 0 or self.shuffle_buffer < 1 \
                or self.in_memory_batches < 0:
            raise ConfigError("data: batch_size_per_worker and shuffle_buffer >= 1, num_loader_workers and "
                              "in_memory_batches >= 0")


@dataclass(frozen=True)
class TeacherRunConfig:
    """Where the CLIP teacher's dense features come from (the teacher itself is the embed job's, named in
    its embed_manifest.json, so the prototypes and the features agree).

    precomputed: read from the sidecars, cropped with each view from the canvas's grid (default: the
    teacher runs once per image, whatever the number of epochs). online: the frozen teacher runs
    inside the step on each view, at the view's resolution, without gradients; the sidecars need only
    superpixels (embed --storage none). README "Precomputed or online teacher" says when each pays.
    """

    mode: str = "precomputed"
    precision: str = "auto"  # online: fp32, fp16, bf16, or auto (fp16 on GPU as the embed job, fp32 on CPU)

    def __post_init__(self):
        if self.mode not in ("precomputed", "online"):
            raise ConfigError(f"teacher.mode must be precomputed or online, got {self.mode!r}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ConfigError(f"teacher.precision must be auto, fp32, fp16 or bf16, got {self.precision!r}")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd (HSG) or adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # the cosine schedule ends at lr * this
    grad_clip: float = 1.0  # 0 = off
    grad_accumulation_steps: int = 1

    def __post_init__(self):
        if self.name not in ("sgd", "adamw"):
            raise ConfigError(f"optim.name must be sgd or adamw, got {self.name!r}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.grad_clip < 0 or self.grad_accumulation_steps < 1:
            raise ConfigError("optim: lr > 0, warmup_steps >= 0, grad_clip >= 0, grad_accumulation_steps >= 1")


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    resources_per_worker: dict = field(default_factory=dict)  # extra Ray resources, e.g. {"accelerator_type:A10G": 0.01}
    placement_strategy: str = "PACK"  # Ray placement of the workers: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    bf16: bool = False  # the network's forward under bf16 autocast (weights, losses and k-means stay fp32)

    def __post_init__(self):
        if self.num_workers < 1 or self.cpus_per_worker < 1:
            raise ConfigError("scaling: num_workers and cpus_per_worker must be >= 1")
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ConfigError(f"scaling.placement_strategy {self.placement_strategy!r} is not a Ray placement strategy")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"scaling.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")


@dataclass(frozen=True)
class RunConfig:
    name: str = "clips4"
    storage_path: str = "runs"  # local folder or s3:// prefix: checkpoints and the exported model under NAME/
    log_dir: str = "runs"  # local folder: NAME/metrics.jsonl and TensorBoard events, written by rank 0
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    checkpoint_every_steps: int = 200
    num_checkpoints_kept: int = 2
    log_every_steps: int = 10
    record_keys: bool = False  # each rank appends its batches' sample keys to log_dir/NAME/keys-rankR.jsonl
    seed: int = 0

    def __post_init__(self):
        if self.checkpoint_every_steps < 1 or self.log_every_steps < 1 or self.num_checkpoints_kept < 1:
            raise ConfigError("run: checkpoint_every_steps, log_every_steps, num_checkpoints_kept must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    epochs: int = 10
    max_steps: int = 0  # 0 = epochs decide; otherwise stop after this many optimizer steps
    refresh_unknown_every_steps: int = 0  # 0 = keep the embed job's unknown prototypes
    refresh_num_unknown: int = 8  # k-means centres tried at each refresh
    teacher: TeacherRunConfig = field(default_factory=TeacherRunConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        if self.epochs < 1 or self.max_steps < 0 or self.refresh_unknown_every_steps < 0 or self.refresh_num_unknown < 1:
            raise ConfigError("epochs >= 1, max_steps >= 0, refresh_unknown_every_steps >= 0, refresh_num_unknown >= 1")
        if self.views.crop_size % self.network.output_stride:
            raise ConfigError(f"views.crop_size {self.views.crop_size} must be a multiple of "
                              f"network.output_stride {self.network.output_stride}")

    @property
    def feature_size(self) -> int:
        """The student's grid side for a view: CLIP features are resampled onto it."""
        return self.views.crop_size // self.network.output_stride


LAYOUT = "data_layout.json"  # beside the run's checkpoints: what cut the data streams (checked at start)


def data_layout(cfg: TrainConfig) -> dict:
    """What a checkpoint's data position depends on: each rank's stream is cut for this many ranks and
    this batch size, so a checkpoint resumes only under the same two."""
    return {"world_size": cfg.scaling.num_workers, "batch_size_per_worker": cfg.data.batch_size_per_worker}


def layout_mismatch(cfg: TrainConfig, saved: dict) -> str | None:
    """One line saying why the run cannot resume from `saved`, or None when it can."""
    now = data_layout(cfg)
    if {k: saved.get(k, now[k]) for k in now} == now:
        return None
    return (f"run {cfg.run.name} was checkpointed with {saved['world_size']} workers x "
            f"{saved['batch_size_per_worker']} images; resuming with {now['world_size']} x "
            f"{now['batch_size_per_worker']} would repeat or skip data: use those settings or a new run.name")
