"""bench/gpu_check.py, the script the GPU machine runs, runs here at tiny sizes with what that machine
lacks (Ray, DeepSpeed, webdataset) made unimportable, so it cannot rot between GPU sessions."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what the GPU machine lacks: any import of these fails, as it would there
BLOCKED = "import sys; [sys.modules.__setitem__(m, None) for m in ('ray', 'deepspeed', 'webdataset', 'fsspec', 's3fs')]"


def test_gpu_check_runs_at_tiny_sizes_without_ray_or_deepspeed(tmp_path):
    out = tmp_path / "gpu_check.json"
    code = f"{BLOCKED}; import runpy; sys.argv = ['gpu_check.py', '--tiny', '--out', {str(out)!r}]; " \
           "runpy.run_path('bench/gpu_check.py', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    parts = [r["part"] for r in report["rows"]]
    assert sum(p.startswith("student step") for p in parts) == 2
    assert sum(p.startswith("teacher dense forward") for p in parts) == 2
    assert "view augmentation on the device" in parts
    for row in report["rows"]:
        assert row["images_per_s"] > 0 and row["ms_per_step"] > 0, row
    students = [r for r in report["rows"] if r["part"].startswith("student")]
    assert all(0 < r["mfu"] and r["model_tflop_per_step"] > 0 for r in students)
    assert students[1]["model_tflop_per_step"] > students[0]["model_tflop_per_step"]  # twice the batch
    assert "| student step, bf16 autocast | 2 |" in done.stdout


def test_gpu_check_copies_its_pure_python_dependencies(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--vendor", str(tmp_path / "vendor")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "vendor").iterdir()} == {"open_clip", "ftfy", "wcwidth"}
    assert (tmp_path / "vendor" / "open_clip" / "model_configs" / "ViT-B-16.json").is_file()
