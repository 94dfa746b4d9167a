"""The trainer: Ray Train + DeepSpeed over streamed shards (see trainer/train.py)."""

import glob
import os

# DeepSpeed warns on stdout at every import on a host without a GPU ("Setting accelerator to CPU"),
# in the driver and in each worker. On a host with no NVIDIA device, name the CPU accelerator as its
# documented DS_ACCELERATOR override does (the same accelerator, logged at INFO); a GPU host is left to
# DeepSpeed's own detection, and a value the user set is kept.
if "DS_ACCELERATOR" not in os.environ and not glob.glob("/dev/nvidia[0-9]*"):
    os.environ["DS_ACCELERATOR"] = "cpu"
