"""Per-step metrics to the three places people look: a progress line, a JSON-lines file, TensorBoard."""

from __future__ import annotations

import json
import logging
import os
import time

# a logger, not print: Ray Train patches a worker's print to log it and, where stdout is wrapped, to print
# it as well (every line twice)
log = logging.getLogger(__name__)


class MetricsLog:
    """Rank 0's log of a run; other ranks pass `enabled=False` and every call is a no-op."""

    def __init__(self, folder: str, total_steps: int, enabled: bool):
        self.enabled, self.total_steps, self.started = enabled, total_steps, time.time()
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(folder, exist_ok=True)
        self.jsonl = open(os.path.join(folder, "metrics.jsonl"), "a")
        self.tensorboard = SummaryWriter(os.path.join(folder, "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        self.jsonl.flush()
        for name, value in metrics.items():
            self.tensorboard.add_scalar(name, value, step)
        eta = (time.time() - self.started) / max(step, 1) * (self.total_steps - step)
        terms = " ".join(f"{k.removeprefix('loss/')}={v:.3f}" for k, v in metrics.items() if k.startswith("loss/"))
        log.info("step %d/%d %s lr=%.4f %.1f img/s data-wait %.0f%% eta %.1f min", step, self.total_steps, terms,
                 metrics["lr"], metrics["images_per_s"], 100 * metrics["data_wait_fraction"], eta / 60)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()
