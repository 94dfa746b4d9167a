"""What a job prints: its own log lines, warnings from everything else, and none of the notices Ray
prints on every start. `--log-level debug` shows everything, Ray's and the libraries' included.

Libraries that log on the root logger at INFO (open_clip: "Using default SimpleTokenizer", "Loaded
... model config") and Ray's start-up and per-dataset notices are what a user of these jobs does
not need; a warning from any of them still shows.
"""

from __future__ import annotations

import logging
import os

LEVELS = ("debug", "info", "warning", "error")
# the project's loggers: its packages, and the jobs' own (named after the job when run as a file)
OURS = ("common", "model", "formats", "pipelines", "trainer", "demo", "bench",
        "shard", "embed", "evaluate", "segment", "main", "train")
# Ray's notices on every start and every dataset: informative once, noise in each job's output
RAY_NOTICES = ("Token authentication is enabled", "Started a local Ray instance", "Connecting to existing Ray",
               "Progress bars disabled", "Starting execution of Dataset", "Execution plan of Dataset",
               "execution finished in", "Registered dataset logger", "Connected to Ray cluster")

# worker lines (forwarded to the driver) that say nothing to a user of a local run, as one regular
# expression: drop_ray_worker_noise
RAY_WORKER_NOISE = "Failed to query Ray Train Controller actor state|Reporting training result"

_level = logging.INFO


class _Ours(logging.Filter):
    """Lines of the project's loggers at the job's level; other loggers' only from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] in OURS or _level <= logging.DEBUG


class _NoRayNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _level <= logging.DEBUG or not any(n in record.getMessage() for n in RAY_NOTICES)


def configure(level: str = "info") -> None:
    """The job's logging: a stderr handler at `level` for the project, WARNING for the rest. As
    `logging.basicConfig`, a process that set up its own handlers (pytest, a notebook) keeps them."""
    global _level
    _level = getattr(logging, level.upper())
    root = logging.getLogger()
    root.setLevel(_level)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler.addFilter(_Ours())
        root.addHandler(handler)


def quiet_ray() -> None:
    """Ray's console handlers (its own, not the root's) without its per-start notices; call after
    `import ray` and again after `import ray.data`, which adds a handler of its own."""
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _NoRayNotices) for f in handler.filters):
                handler.addFilter(_NoRayNotices())


def drop_ray_worker_noise() -> None:
    """Call before anything imports ray (Ray reads the setting then), in the entry files that train.

    Ray Train's placement-group cleaner asks the state API, which the dashboard serves and a local run
    does not start, whether the training controller lives, and warns every second that it cannot (200
    lines in the quick run's training); a local Ray ends with its driver, placement groups and all, so
    there is nothing for it to clean. And each worker's "Reporting training result" at every checkpoint
    comes from a logger Ray Train names by file path, outside its own log level (ray.train.LoggingConfig).
    Ray's log deduplication (on by default) skips the worker lines its RAY_DEDUP_LOGS_SKIP_REGEX matches;
    a value of the user's own is kept."""
    os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", RAY_WORKER_NOISE)


def ray_train_level() -> str:
    """Ray Train's own log level (ray.train.LoggingConfig): its lines (worker group started, each
    checkpoint reported by each worker) as other libraries' at the job's level, warnings and up; all of
    them at debug."""
    return "DEBUG" if _level <= logging.DEBUG else "WARNING"
