"""A local Ray started by `init_ray` goes away whole when the job exits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

JOB = """
import os, ray
from common.ray_utils import init_ray
from tests.common.test_ray_utils import descendants

init_ray(1)
ray.data.range(4).map(lambda row: row).materialize()  # Ray Data's own actors start too
for pid in descendants(os.getpid()):
    try:
        print(pid, open(f"/proc/{pid}/cmdline").read().replace(chr(0), " "))
    except OSError:
        pass
"""


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, parent pid, ...; None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def descendants(pid: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        fields = _stat_fields(int(entry)) if entry.isdigit() else None
        if fields:
            parents[int(entry)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has exited; only its parent's bookkeeping is left


def test_a_local_run_leaves_no_ray_process_behind():
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", JOB], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    started = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.split(" ", 1)[0].isdigit())
    assert any("gcs_server" in cmd for cmd in started.values()), started
    assert any("autoscaler/_private/monitor.py" in cmd for cmd in started.values()), started  # gone too
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(int(pid)) for pid in started):
        time.sleep(0.2)
    assert [cmd[:80] for pid, cmd in started.items() if _alive(int(pid))] == []
