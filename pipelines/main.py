"""The main job: from nothing to a dataset (and, as stages land, a trained and evaluated model).

    python pipelines/main.py --name demo            # local Ray, generated corpus
    python pipelines/main.py --name demo --quick    # the short profile the tests use
    RAY_ADDRESS=auto python pipelines/main.py ...   # on a running cluster

Every stage leaves its result under `runs/NAME/` and is skipped when already complete, so a
rerun after a kill resumes instead of starting over. Stages today: synthetic corpus, shards.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from pipelines import shard, synth
from pipelines.config import ConfigError, parse_config
from pipelines.storage import filesystem, join

log = logging.getLogger("main")


@dataclass
class MainConfig:
    name: str = field(default="demo", metadata={"help": "run name: outputs go to runs/NAME"})
    runs_root: str = "runs"
    quick: bool = field(default=False, metadata={"help": "a small corpus for a fast end-to-end check"})
    num_train: int = 3000
    num_val: int = 200
    image_size: int = 128
    samples_per_shard: int = 500
    num_cpus: int = 0

    def __post_init__(self):
        if self.quick:
            self.num_train, self.num_val, self.samples_per_shard = 300, 40, 100
        if min(self.num_train, self.num_val, self.image_size, self.samples_per_shard) < 1:
            raise ConfigError("num_train, num_val, image_size and samples_per_shard must be positive")

    @property
    def root(self) -> str:
        return join(self.runs_root, self.name)


def stage_corpus(cfg: MainConfig) -> None:
    fs, root = filesystem(cfg.root)
    marker = join(root, "corpus", "_SUCCESS")
    if fs.exists(marker):
        log.info("corpus: already generated")
        return
    synth.write_corpus(join(root, "corpus"), cfg.num_train, cfg.num_val, cfg.image_size)
    fs.pipe_file(marker, b"")
    log.info("corpus: %d training and %d validation scenes", cfg.num_train, cfg.num_val)


def stage_shards(cfg: MainConfig) -> dict:
    return shard.run(shard.ShardConfig(
        input=join(cfg.root, "corpus", "train"), output=join(cfg.root, "shards"),
        samples_per_shard=cfg.samples_per_shard, image_size=cfg.image_size, resize_mode="none",
        num_cpus=cfg.num_cpus))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = parse_config(MainConfig, argv, description=__doc__.split("\n")[0])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stage_corpus(cfg)
    manifest = stage_shards(cfg)
    print(f"\nrun {cfg.name}: {manifest['num_samples']} training images in {manifest['num_shards']} shards "
          f"under {join(cfg.root, 'shards')}")
    print("not built yet: CLIP precompute, training and evaluation stages (issues 3-7)")
    return 1 if manifest.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
