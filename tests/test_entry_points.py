"""Every job runs as a file and as a module; run as a file it imports its own checkout's packages,
not a copy installed elsewhere (what `ray job submit --working-dir .` relies on)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRIES = ["pipelines/shard.py", "pipelines/embed.py", "pipelines/evaluate.py", "pipelines/segment.py",
           "pipelines/main.py", "trainer/train.py"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_job_run_as_a_file_imports_its_own_checkout(tmp_path, entry):
    for name in ("common", "model", "formats", "pipelines", "trainer", "demo"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.png"))
    (tmp_path / "common" / "__init__.py").write_text("print('imported the copy')\n")
    done = subprocess.run([sys.executable, str(tmp_path / entry), "--help"], cwd="/", capture_output=True,
                          text=True, timeout=120)  # the repository's own packages are installed (editable)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported the copy" in done.stdout and "usage:" in done.stdout


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_job_runs_as_a_module(entry):
    module = entry.removesuffix(".py").replace("/", ".")
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]  # nothing of the libraries' before it (DeepSpeed's)
    # the description is the docstring's first paragraph, whole: it ends a sentence
    description = done.stdout.split("\n\n")[1]
    assert description.rstrip().endswith(".") and not description.startswith(" "), description
