"""A job's own lines reach its user at the default level; other libraries' only from WARNING up."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from common.logs import OURS, RAY_WORKER_NOISE, _Ours

REPO = Path(__file__).resolve().parents[2]


def record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "a line", None, None)


def test_every_logger_of_the_project_is_one_the_jobs_show():
    named = {m.group(1): path for path in REPO.glob("[a-z]*/**/*.py") if ".venv" not in path.parts
             for m in re.finditer(r'getLogger\("([^"]+)"\)', path.read_text())}
    assert named  # the jobs name theirs after themselves (run as a file, __name__ is __main__)
    hidden = {name: str(path) for name, path in named.items() if name.split(".")[0] not in OURS}
    assert not hidden  # its INFO lines (e.g. the teacher's "reusing ...") would never be seen
    shown = _Ours()
    assert all(shown.filter(record(name, logging.INFO)) for name in named)
    assert shown.filter(record("demo.teacher", logging.INFO))  # a module's __name__
    assert not shown.filter(record("open_clip.factory", logging.INFO))
    assert shown.filter(record("open_clip.factory", logging.WARNING))


def test_ray_worker_noise_is_dropped_before_ray_reads_its_settings_and_a_users_setting_is_kept():
    # the entry files that train set it before anything imports ray, which reads it on import (into its
    # log deduplicator, read back here)
    code = ("import trainer.train, ray._private.ray_logging as r; "
            "print(r.stderr_deduplicator.skip_re.pattern if r.stderr_deduplicator.skip_re else None)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_DEDUP_LOGS_SKIP_REGEX"}
    for extra, expected in (({}, RAY_WORKER_NOISE), ({"RAY_DEDUP_LOGS_SKIP_REGEX": "mine"}, "mine")):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, **extra}, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == expected
