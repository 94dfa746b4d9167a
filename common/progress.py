"""A progress bar on the driver that moves per image while Ray tasks and actors elsewhere do the work.

Ray Data hands the driver one row per finished unit (a shard of 10,000 images, a chunk of 256), so a
bar fed by results alone jumps from 0% to 100% on a small job. Here the workers count their items on
a `Reporter` (a handle to one small actor, fire-and-forget calls at most every `every_s`) and the
driver's `Progress` polls it: the bar shows items/s and an ETA per image, and the results still
decide the final figure (a retried shard may count twice; the bar never passes its total).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from tqdm import tqdm

log = logging.getLogger(__name__)
EVERY_S = 0.5  # a worker reports at most this often; the driver polls as often


@ray.remote(num_cpus=0)
class _Tally:
    def __init__(self):
        self.value, self.reports = 0, 0

    def add(self, n: int) -> None:
        self.value += n
        self.reports += 1

    def get(self) -> tuple[int, int]:
        return self.value, self.reports


@dataclass
class Reporter:
    """Worker side: `add(n)` as items finish; the count reaches the driver at most every `every_s`."""

    tally: Any
    every_s: float = EVERY_S
    _pending: int = 0
    _last: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._pending += n
            if time.monotonic() - self._last >= self.every_s:
                self._send()

    def flush(self) -> None:
        with self._lock:
            self._send()

    def _send(self) -> None:
        if self._pending:
            self.tally.add.remote(self._pending)
            self._pending = 0
        self._last = time.monotonic()

    def __getstate__(self) -> dict:  # a lock does not pickle: each copy in a task gets its own
        return {"tally": self.tally, "every_s": self.every_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


class Progress:
    """Driver side: a tqdm bar over `total` items, moved by what the workers' `reporter()`s send and by
    `done(n)` for items the driver learns of from results. A context manager."""

    def __init__(self, total: int, desc: str, unit: str = "img"):
        self.total, self.every_s = total, EVERY_S
        self.tally = _Tally.remote()
        self.bar = tqdm(total=total, desc=desc, unit=unit)
        self._from_results = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def reporter(self) -> Reporter:
        return Reporter(self.tally, self.every_s)

    def done(self, n: int) -> None:
        """`n` more items finished, as a result row says: the bar is at least this far."""
        self._from_results += n
        self._show(0)

    def _show(self, reported: int) -> None:
        with self._lock:  # the polling thread and the result loop both move the bar
            at = min(self.total, max(reported, self._from_results))
            if at > self.bar.n:
                self.bar.update(at - self.bar.n)

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            self._show(ray.get(self.tally.get.remote())[0])

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        value, reports = ray.get(self.tally.get.remote())
        self._show(value)
        self.bar.close()
        log.debug("%s: %d items reported by workers in %d reports", self.bar.desc, value, reports)
        ray.kill(self.tally)
