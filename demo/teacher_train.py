"""OpenCLIP's own trainer (open_clip_train) with this repo's tiny model configs registered.

    python -m demo.teacher_train --model tiny-rn --train-data 'shards/{00000..00005}.tar' ...

Every flag is open_clip_train's. Two additions: `model/clip_configs/` is known to it, and its sample
shuffle is seeded. open_clip_train calls webdataset's `shuffle` without a random generator, and
webdataset then seeds one from the process id and the time: two runs of one recipe drew two different
teachers (language mIoU 10 to 25 on the demo). webdataset's own seeded stage, `detshuffle`, takes its
place, seeded from --seed and the epoch, the epoch counted from the one a `--resume latest` run starts
at: one recipe gives one teacher, killed and resumed or not.
"""

import os
import sys

import torch
import webdataset
from open_clip_train.main import main
from open_clip_train.params import parse_args

from model.clip_teacher import open_clip


def first_epoch(args) -> int:
    """The epoch this run starts at: a `--resume latest` run goes on from its latest checkpoint's."""
    latest = os.path.join(args.logs, args.name or "", "checkpoints", "epoch_latest.pt")
    if args.resume != "latest" or not os.path.exists(latest):
        return 0
    return int(torch.load(latest, map_location="cpu", weights_only=False)["epoch"])


def seeded_sample_shuffle(seed: int, start: int):
    """webdataset.shuffle(bufsize, initial) as open_clip_train calls it, seeded: the n-th pass over the
    data (an epoch, in open_clip_train's persistent loader worker) draws from seed + start + n."""
    return lambda bufsize=1000, initial=100, **_: webdataset.detshuffle(bufsize=bufsize, initial=initial, seed=seed,
                                                                        epoch=start - 1)


if __name__ == "__main__":
    open_clip()  # registers model/clip_configs with open_clip
    args = parse_args(sys.argv[1:])  # open_clip_train's own reading of its flags (main reads them again)
    webdataset.shuffle = seeded_sample_shuffle(args.seed, first_epoch(args))
    main(sys.argv[1:])
