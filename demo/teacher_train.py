"""OpenCLIP's own trainer (open_clip_train) with this repo's tiny model configs registered.

    python -m demo.teacher_train --model tiny-rn --train-data 'shards/{00000..00005}.tar' ...

Every flag is open_clip_train's; the only addition is that `model/clip_configs/` is known to it.
"""

import sys

from open_clip_train.main import main

from model.clip_teacher import open_clip

if __name__ == "__main__":
    open_clip()  # registers model/clip_configs with open_clip
    main(sys.argv[1:])
