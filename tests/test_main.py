"""The README's first command, in its --quick profile: nothing to a trained, evaluated model and a
report, then a rerun that redoes nothing."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_main_run_reports_and_beats_raw_pixel_kmeans(tmp_path):
    cmd = [sys.executable, "pipelines/main.py", "--name", "e2e", "--quick", "--runs-root", str(tmp_path)]
    env = {**os.environ, "RAY_ADDRESS": ""}
    started = time.time()
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    first_seconds = time.time() - started
    run = tmp_path / "e2e"
    report = json.loads((run / "eval" / "report.json").read_text())
    unsupervised = report["tasks"]["unsupervised"]
    for task in ("language", "unsupervised", "unseen", "probe"):
        for method, scores in report["tasks"][task].items():
            assert 0 <= scores["miou"] <= 1, (task, method)
    assert unsupervised["student"]["miou"] > unsupervised["pixels"]["miou"], unsupervised
    # Not asserted: beating k-means on an UNTRAINED network. The default run does (19.1 vs 9.8), but
    # the quick profile's small teacher does not yet (8.4 vs 9.6 on 40 scenes): issue 7 stays open.
    assert "untrained" in unsupervised
    text = (run / "report.md").read_text()
    assert "| student |" in text and "open_clip_train" in text
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert any(p.name.startswith("unsupervised_") for p in (run / "eval" / "panels").iterdir())
    assert "report:" in first.stdout

    started = time.time()
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 written, 8 already complete" in again.stdout and "0 embedded now" in again.stdout
    assert "exists" in again.stderr + again.stdout  # training is not redone
    assert time.time() - started < 0.5 * first_seconds
